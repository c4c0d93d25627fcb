#!/usr/bin/env bash
# Load run of referral ingestion against a release build of Sprig on loopback.
#
#   benches/load.sh [DURATION_SECONDS] [CONNECTIONS]     (defaults: 20 s, 32 connections)
#
# Needs wrk (Debian: apt-get install wrk). Prints, for each SQLite durability mode: start-up time
# to ready, wrk's throughput and latency for GET /healthz (the same-run baseline), for
# POST /fhir/ServiceRequest (examples/referral-servicerequest.json) and for POST /fhir (the
# transaction Bundle examples/referral-transaction-bundle.json), each request a new referral
# (benches/post-unique.lua varies the identifier: validate + map + store, not a resubmission),
# and the server's peak RSS. Traffic goes to 127.0.0.1 only and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-20}"
CONNECTIONS="${2:-32}"
command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet
# Where cargo put the binary: CARGO_TARGET_DIR when set, else ./target.
SPRIG="${CARGO_TARGET_DIR:-target}/release/sprig"
WORK="$(mktemp -d)"
trap 'kill "${PID:-0}" 2>/dev/null || true; rm -rf "$WORK"' EXIT

for MODE in full normal; do
    LOG="$WORK/sprig-$MODE.log"
    START_NS=$(date +%s%N)
    SPRIG_SQLITE__SYNCHRONOUS=$MODE SPRIG_LOG__FORMAT=json SPRIG_LOG__LEVEL=warn,sprig=info \
        "$SPRIG" serve --listen 127.0.0.1:0 --database "$WORK/load-$MODE.db" 2>"$LOG" &
    PID=$!
    ADDRESS=""
    for _ in $(seq 1 500); do
        ADDRESS=$(grep -o '"address":"[^"]*"' "$LOG" 2>/dev/null | head -1 | cut -d'"' -f4 || true)
        if [ -n "$ADDRESS" ] && curl -fs "http://$ADDRESS/readyz" >/dev/null 2>&1; then break; fi
        sleep 0.01
    done
    READY_MS=$(( ($(date +%s%N) - START_NS) / 1000000 ))
    # Request logs stay on (one JSON line per request, as in production).
    echo "== synchronous=$MODE: ready in ${READY_MS} ms (process start to /readyz 200) at $ADDRESS"
    RSS_IDLE=$(awk '/VmRSS/ {print $2}' /proc/$PID/status)
    echo "-- baseline: GET /healthz, ${CONNECTIONS} connections, ${DURATION}s"
    wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://$ADDRESS/healthz" | grep -E 'Requests/sec|^ +50%|^ +99%|Non-2xx|errors'
    echo "-- POST /fhir/ServiceRequest (contained), ${CONNECTIONS} connections, ${DURATION}s"
    LOAD_BODY_FILE="$PWD/examples/referral-servicerequest.json" LOAD_UNIQUE=REF-2026-000123 \
        wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s benches/post-unique.lua \
        "http://$ADDRESS/fhir/ServiceRequest" | grep -E 'Requests/sec|^ +50%|^ +75%|^ +90%|^ +99%|Non-2xx|errors|requests in'
    echo "-- POST /fhir (transaction Bundle, 7 entries), ${CONNECTIONS} connections, ${DURATION}s"
    LOAD_BODY_FILE="$PWD/examples/referral-transaction-bundle.json" LOAD_UNIQUE=REF-2026-000456 \
        wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s benches/post-unique.lua \
        "http://$ADDRESS/fhir" | grep -E 'Requests/sec|^ +50%|^ +75%|^ +90%|^ +99%|Non-2xx|errors|requests in'
    echo "-- RSS: idle ${RSS_IDLE} kB, peak $(awk '/VmHWM/ {print $2}' /proc/$PID/status) kB"
    STORED=$(sqlite3 "$WORK/load-$MODE.db" \
        "SELECT group_concat(received_as || ' ' || n, ', ') FROM (SELECT received_as, COUNT(*) AS n FROM referrals GROUP BY received_as)" \
        2>/dev/null || echo "?")
    kill -TERM "$PID"; wait "$PID" || true
    echo "-- referrals stored (compare with wrk's request counts): $STORED"
    echo "-- server log: $(grep -c -E '"level":"(WARN|ERROR)"' "$LOG" || true) lines at warn or error"
    grep -m5 -E '"level":"(WARN|ERROR)"' "$LOG" || true
done
