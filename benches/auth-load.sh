#!/usr/bin/env bash
# Cost of authentication and audit per request (issue 17), side by side in one run.
#
#   benches/auth-load.sh [DURATION_SECONDS] [CONNECTIONS] [SPRIG_BINARY] [GRANTS]
#       (defaults: 15 s, 16 connections, a release build made here, 5000 grants)
#
# Needs wrk, openssl and python3 (standard library only). Starts two Sprigs on loopback,
# each with a fresh SQLite database and the same limits: one OPEN (nothing configured: the
# developer on loopback; every request is still audited, as audit cannot be switched
# off) and one SECURED (a client registry with one RS384 client for K83999, a token
# secret; every request carries a bearer token that is checked, its client looked up in
# the registry and its scopes and practice checked, and is audited as that client). For
# each, wrk measures, one after the other: POST /fhir/ServiceRequest (a new referral each
# time: benches/post-unique.lua) and GET /fhir/ServiceRequest?_count=10 (a search of the
# referrals just made). Then the token endpoint: client-credentials grants, each with its
# own RS384 assertion signed beforehand by openssl (benches/token-grants.lua; a jti is
# used once). Prints requests/s and p50/p99 per run, and the secured/open ratios.
# Traffic goes to 127.0.0.1 only and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-15}"
CONNECTIONS="${2:-16}"
SPRIG="${3:-}"
GRANTS="${4:-5000}"
for tool in wrk openssl python3 curl; do
    command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done
if [ -z "$SPRIG" ]; then
    cargo build --release --quiet
    SPRIG="${CARGO_TARGET_DIR:-target}/release/sprig"
fi
WORK="$(mktemp -d)"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; [ -n "${KEEP_WORK:-}" ] && echo "kept $WORK" || rm -rf "$WORK"' EXIT

# The client's key pair, its public JWKS, the registry and Sprig's token secret.
openssl genrsa -out "$WORK/client.pem" 2048 2>/dev/null
MODULUS=$(openssl rsa -in "$WORK/client.pem" -noout -modulus | cut -d= -f2)
python3 - "$MODULUS" > "$WORK/jwks.json" <<'PY'
import base64, json, sys
n = bytes.fromhex(sys.argv[1])
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
print(json.dumps({"keys": [{"kty": "RSA", "kid": "bench", "alg": "RS384", "use": "sig",
                             "n": b64(n), "e": b64((65537).to_bytes(3, "big"))}]}))
PY
cat > "$WORK/clients.toml" <<'TOML'
[[client]]
client_id = "bench-gp"
ods_codes = ["K83999"]
scopes = "system/*.cruds"
jwks_file = "jwks.json"
TOML
head -c 48 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$WORK/token.secret"
chmod 600 "$WORK/token.secret"

# Starts Sprig (extra settings as environment) and sets ADDRESS.
start() {
    local name=$1
    shift
    env "$@" SPRIG_LOG__FORMAT=json SPRIG_LOG__LEVEL=warn,sprig=info \
        SPRIG_AUTH__RATE_LIMIT_PER_MINUTE=100000000 SPRIG_AUTH__RATE_LIMIT_BURST=10000000 \
        "$SPRIG" serve --listen 127.0.0.1:0 --database "$WORK/$name.db" 2>"$WORK/$name.log" &
    PIDS+=($!)
    ADDRESS=""
    for _ in $(seq 1 1000); do
        ADDRESS=$(grep -o '"address":"[^"]*"' "$WORK/$name.log" 2>/dev/null | head -1 | cut -d'"' -f4 || true)
        if [ -n "$ADDRESS" ] && curl -fs "http://$ADDRESS/readyz" >/dev/null 2>&1; then return; fi
        sleep 0.02
    done
    echo "$name did not start:" >&2
    cat "$WORK/$name.log" >&2
    exit 1
}

start open
OPEN="$ADDRESS"
start secured SPRIG_AUTH__CLIENTS="$WORK/clients.toml" SPRIG_AUTH__TOKEN_SECRET_FILE="$WORK/token.secret"
SECURED="$ADDRESS"
TOKEN_URL=$(curl -fs "http://$SECURED/.well-known/smart-configuration" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["token_endpoint"])')

# Signed client assertions (RS384: PKCS#1 v1.5 over SHA-384, as openssl dgst -sign makes
# it), COUNT of them, written as token request bodies, one per line. Each expires 280 s
# after it is signed: they are made just before they are used.
sign_grants() {
python3 - "$WORK/client.pem" "$TOKEN_URL" "$1" <<'PY'
import base64, json, subprocess, sys, time, urllib.parse, uuid
key, token_url, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
header = b64(json.dumps({"alg": "RS384", "typ": "JWT", "kid": "bench"}).encode())
for _ in range(count):
    claims = {"iss": "bench-gp", "sub": "bench-gp", "aud": token_url,
              "exp": int(time.time()) + 280, "jti": str(uuid.uuid4())}
    signing_input = f"{header}.{b64(json.dumps(claims).encode())}"
    signature = subprocess.run(["openssl", "dgst", "-sha384", "-sign", key],
                               input=signing_input.encode(), capture_output=True,
                               check=True).stdout
    print(urllib.parse.urlencode({
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": f"{signing_input}.{b64(signature)}",
        "scope": "system/ServiceRequest.crs system/Task.rs",
    }))
PY
}

# A fresh access token (they live 5 minutes: one per round, so none expires mid-run).
mint_token() {
    curl -fs -X POST "$TOKEN_URL" -H 'content-type: application/x-www-form-urlencoded' \
        --data "$(sign_grants 1)" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])'
}

# Runs wrk and prints "requests/s p50 p99 non2xx" on one line.
measure() {
    wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@" | python3 -c '
import re, sys
text = sys.stdin.read()
rps = re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)
p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1)
p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1)
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(rps, p50, p99, bad.group(1) if bad else 0)'
}

report() {
    read -r rps p50 p99 bad <<<"$2"
    printf '%-46s %10s req/s   p50 %8s   p99 %8s   non-2xx %s\n' "$1" "$rps" "$p50" "$p99" "$bad"
}

echo "== $(date -u +%FT%TZ), $CONNECTIONS connections, ${DURATION}s per run, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
BODY="$PWD/examples/referral-servicerequest.json"
# ROUNDS rounds, each open-secured-secured-open (create) and secured-open-open-secured
# (search), so that a machine whose load drifts during the run (these are shared) weighs
# on both sides alike; the ratio reported is the median of the rounds' ratios.
ROUNDS="${ROUNDS:-3}"
CREATES=()
SEARCHES=()
open_create() { LOAD_BODY_FILE="$BODY" LOAD_UNIQUE=REF-2026-000123 LOAD_PREFIX="o$1-" \
    measure -s benches/post-unique.lua "http://$OPEN/fhir/ServiceRequest"; }
secured_create() { LOAD_BODY_FILE="$BODY" LOAD_UNIQUE=REF-2026-000123 LOAD_PREFIX="s$1-" \
    LOAD_AUTHORIZATION="Bearer $TOKEN" measure -s benches/post-unique.lua "http://$SECURED/fhir/ServiceRequest"; }
open_search() { measure "http://$OPEN/fhir/ServiceRequest?_count=10"; }
secured_search() { measure -H "Authorization: Bearer $TOKEN" "http://$SECURED/fhir/ServiceRequest?_count=10"; }
for round in $(seq 1 "$ROUNDS"); do
    TOKEN=$(mint_token)
    a=$(open_create "$round"a); report "open:    POST /fhir/ServiceRequest" "$a"
    b=$(secured_create "$round"a); report "secured: POST /fhir/ServiceRequest" "$b"
    c=$(secured_create "$round"b); report "secured: POST /fhir/ServiceRequest" "$c"
    d=$(open_create "$round"b); report "open:    POST /fhir/ServiceRequest" "$d"
    CREATES+=("$a|$b|$c|$d")
    a=$(secured_search); report "secured: GET /fhir/ServiceRequest?_count=10" "$a"
    b=$(open_search); report "open:    GET /fhir/ServiceRequest?_count=10" "$b"
    c=$(open_search); report "open:    GET /fhir/ServiceRequest?_count=10" "$c"
    d=$(secured_search); report "secured: GET /fhir/ServiceRequest?_count=10" "$d"
    SEARCHES+=("$b|$a|$c|$d")
done
# Grants are short runs: every grant needs its own signed assertion (a replayed jti is
# refused, and a refusal is cheaper than a grant), so the run must not outlast the file.
GRANT_SECONDS=$(( DURATION < 3 ? DURATION : 3 ))
sign_grants "$GRANTS" > "$WORK/grants.txt"
GRANTS_RUN=$(LOAD_GRANTS_FILE="$WORK/grants.txt" LOAD_THREADS=2 \
    wrk -t2 -c"$CONNECTIONS" -d"${GRANT_SECONDS}s" --latency -s benches/token-grants.lua "$TOKEN_URL" |
    python3 -c '
import re, sys
text = sys.stdin.read()
rps = re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)
p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1)
p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1)
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
total = int(re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", text).group(1))
bad = int(bad.group(1)) if bad else 0
# Only granted tokens count: a refusal (the file ran out, a replay) is not a grant.
seconds = float(sys.argv[1])
print(f"{(total - bad) / seconds:.2f}", p50, p99, bad)' "$GRANT_SECONDS")
report "secured: POST /auth/token (${GRANT_SECONDS}s, granted)" "$GRANTS_RUN"
if [ "$(echo "$GRANTS_RUN" | cut -d' ' -f4)" != 0 ]; then
    echo "-- token: some grants were refused (the $GRANTS signed assertions ran out?): the rate is a lower bound; run with more GRANTS"
fi
python3 - "$(printf '%s;' "${CREATES[@]}")" "$(printf '%s;' "${SEARCHES[@]}")" <<'PY'
import statistics, sys
# Rounds separated by ";", each "open|secured|secured|open" runs of "rate p50 p99 non2xx".
for what, rounds in (("create", sys.argv[1]), ("search", sys.argv[2])):
    ratios = []
    for round_ in filter(None, rounds.split(";")):
        o1, s1, s2, o2 = (float(run.split()[0]) for run in round_.split("|"))
        ratios.append((s1 + s2) / (o1 + o2))
    ratio = statistics.median(ratios)
    print(f"-- {what}: secured/open throughput, median of {len(ratios)} rounds {ratio:.3f} "
          f"({(1 - ratio) * 100:+.1f} % slower; rounds {', '.join(f'{r:.3f}' for r in ratios)})")
PY
for name in open secured; do
    echo "-- $name server log: $(grep -c -E '"level":"(WARN|ERROR)"' "$WORK/$name.log" || true) lines at warn or error"
done
