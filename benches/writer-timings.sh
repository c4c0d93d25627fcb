#!/usr/bin/env bash
# Where a create's time on the SQLite writer goes: one release Sprig (a fresh SQLite file,
# synchronous=full, authentication off on loopback), SECONDS (default 6) of new referrals
# from wrk (32 connections, benches/post-unique.lua), and a summary of the group commit's
# own debug timings (store::sqlite::group, store::sqlite::direct):
#
#   benches/writer-timings.sh [target/release/sprig] [seconds] [create|transaction]
#
# `transaction` sends the example transaction Bundle (POST /fhir, fresh identifiers) instead.
#
# held: from a request getting the writer to its RELEASE; lock: the hand-off to take the
# connection from sqlx's worker; run: the queued statements (with the savepoint's BEGIN,
# SAVEPOINT and RELEASE around them), run in one call; commit: a batch's COMMIT (writing its
# WAL frames); sync: the WAL's fsync, after the writer has been handed on. Needs wrk and python3.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${1:-$ROOT/target/release/sprig}"
SECONDS_OF_LOAD="${2:-6}"
case "${3:-create}" in
    create) BODY=examples/referral-servicerequest.json UNIQUE=REF-2026-000123 URL_PATH=/fhir/ServiceRequest ;;
    transaction) BODY=examples/referral-transaction-bundle.json UNIQUE=REF-2026-000456 URL_PATH=/fhir ;;
    *) echo "usage: $0 [sprig] [seconds] [create|transaction]" >&2; exit 2 ;;
esac
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
PORT=$((20000 + RANDOM % 20000))
SPRIG_LOG__FORMAT=json SPRIG_LOG__LEVEL="warn,sprig::store::sqlite=debug" \
    SPRIG_SQLITE__SYNCHRONOUS=full \
    "$BIN" serve --listen "127.0.0.1:$PORT" --database "$WORK/timings.db" 2>"$WORK/log" &
SPRIG=$!
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
LOAD_BODY_FILE="$ROOT/$BODY" LOAD_UNIQUE="$UNIQUE" \
    wrk -t2 -c32 -d"${SECONDS_OF_LOAD}s" --latency -s "$ROOT/benches/post-unique.lua" \
    "http://127.0.0.1:$PORT$URL_PATH" | grep -E "Requests/sec|50%|99%"
kill "$SPRIG"
wait "$SPRIG" 2>/dev/null || true
python3 - "$WORK/log" "$SECONDS_OF_LOAD" <<'PY'
import json, statistics, sys
series = {name: [] for name in ("held_us", "lock_us", "run_us", "statements", "commit_us", "sync_us", "batch")}
for line in open(sys.argv[1]):
    try:
        fields = json.loads(line).get("fields", {})
    except ValueError:
        continue
    message = fields.get("message")
    if message == "write committed":
        names = ("held_us",)
    elif message == "queued statements ran":
        names = ("lock_us", "run_us", "statements")
    elif message == "write batch committed":
        names = ("commit_us", "sync_us", "batch")
    else:
        continue
    for name in names:
        if name in fields:
            series[name].append(int(fields[name]))
def at(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]
for name, values in series.items():
    if values:
        print(f"{name:11} p50 {at(values, .5):>7}  mean {int(statistics.mean(values)):>7}  "
              f"p99 {at(values, .99):>7}  n {len(values)}")
seconds = float(sys.argv[2])
print(f"writer held {sum(series['held_us']) / seconds / 1e6:.0%} of the run, "
      f"COMMITs {sum(series['commit_us']) / seconds / 1e6:.0%}, "
      f"syncs (off the writer) {sum(series['sync_us']) / seconds / 1e6:.0%}")
PY
