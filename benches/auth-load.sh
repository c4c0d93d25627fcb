#!/usr/bin/env bash
# Cost of authentication and audit per request (issue 17), side by side in one run.
#
#   benches/auth-load.sh [DURATION_SECONDS] [CONNECTIONS] [SPRIG_BINARY] [GRANTS]
#       (defaults: 15 s, 16 connections, a release build made here, 3000 grants)
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
GRANTS="${4:-3000}"
for tool in wrk openssl python3 curl; do
    command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done
if [ -z "$SPRIG" ]; then
    cargo build --release --quiet
    SPRIG="${CARGO_TARGET_DIR:-target}/release/sprig"
fi
WORK="$(mktemp -d)"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"' EXIT

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

# Signed client assertions, one per grant (RS384: PKCS#1 v1.5 over SHA-384, as openssl
# dgst -sign makes it), written as token request bodies, one per line.
python3 - "$WORK/client.pem" "$TOKEN_URL" "$GRANTS" > "$WORK/grants.txt" <<'PY'
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
# One grant (the last line) for the access token the secured runs send.
TOKEN=$(curl -fs -X POST "$TOKEN_URL" -H 'content-type: application/x-www-form-urlencoded' \
    --data "$(tail -1 "$WORK/grants.txt")" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
sed -i '$d' "$WORK/grants.txt"

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
OPEN_CREATE=$(LOAD_BODY_FILE="$BODY" LOAD_UNIQUE=REF-2026-000123 measure -s benches/post-unique.lua "http://$OPEN/fhir/ServiceRequest")
report "open:    POST /fhir/ServiceRequest" "$OPEN_CREATE"
SECURED_CREATE=$(LOAD_BODY_FILE="$BODY" LOAD_UNIQUE=REF-2026-000123 LOAD_AUTHORIZATION="Bearer $TOKEN" \
    measure -s benches/post-unique.lua "http://$SECURED/fhir/ServiceRequest")
report "secured: POST /fhir/ServiceRequest" "$SECURED_CREATE"
OPEN_SEARCH=$(measure "http://$OPEN/fhir/ServiceRequest?_count=10")
report "open:    GET /fhir/ServiceRequest?_count=10" "$OPEN_SEARCH"
SECURED_SEARCH=$(measure -H "Authorization: Bearer $TOKEN" "http://$SECURED/fhir/ServiceRequest?_count=10")
report "secured: GET /fhir/ServiceRequest?_count=10" "$SECURED_SEARCH"
GRANT_SECONDS=$(( DURATION < 10 ? DURATION : 10 ))
GRANTS_RUN=$(LOAD_GRANTS_FILE="$WORK/grants.txt" LOAD_THREADS=2 \
    wrk -t2 -c"$CONNECTIONS" -d"${GRANT_SECONDS}s" --latency -s benches/token-grants.lua "$TOKEN_URL" |
    python3 -c '
import re, sys
text = sys.stdin.read()
rps = re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)
p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1)
p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1)
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(rps, p50, p99, bad.group(1) if bad else 0)')
report "secured: POST /auth/token (${GRANT_SECONDS}s)" "$GRANTS_RUN"
read -r _ _ _ GRANTS_REFUSED <<<"$GRANTS_RUN"
if [ "$GRANTS_REFUSED" != 0 ]; then
    # Replays of used assertions are refused, and fast: they would flatter the rate.
    echo "-- token endpoint: the $GRANTS signed assertions ran out ($GRANTS_REFUSED replays refused);" \
        "its req/s is not a grant rate: run again with more GRANTS (4th argument)"
fi
python3 - "$OPEN_CREATE" "$SECURED_CREATE" "$OPEN_SEARCH" "$SECURED_SEARCH" <<'PY'
import sys
rate = lambda run: float(run.split()[0])
for what, open_run, secured_run in (("create", sys.argv[1], sys.argv[2]),
                                    ("search", sys.argv[3], sys.argv[4])):
    ratio = rate(secured_run) / rate(open_run)
    print(f"-- {what}: secured/open throughput {ratio:.3f} ({(1 - ratio) * 100:+.1f} % slower)")
PY
for name in open secured; do
    echo "-- $name server log: $(grep -c -E '"level":"(WARN|ERROR)"' "$WORK/$name.log" || true) lines at warn or error"
done
