#!/usr/bin/env bash
# Sprig's validator beside a peer's, @medplum/core's validateResource on
# Node, in one run with the same inputs: the 20-entry referral Bundle
# (benches/data/referral-bundle-20.json) and every resource of the R4
# examples package. Rounds alternate (sprig, medplum, sprig, medplum…) so the
# machine's noise shows; the table's ratios come from the same round.
#
# Usage: benches/peer.sh            (from anywhere; figures go in BENCHMARKS.md)
# Environment:
#   ROUNDS=2          rounds of (sprig, medplum)
#   N=1000 WARMUP=200 timed and untimed validations of the Bundle, both sides
#   EXAMPLE_PASSES=1  timed passes over the examples (after one untimed pass)
#   R4_EXAMPLES_DIR   an unpacked hl7.fhir.r4.examples@4.0.1 package/ folder
#                     (otherwise fetched with npm pack into a temporary folder)
#   PIN_CPU=1         the CPU both run on (taskset); "none" to not pin
#   RESULTS=FILE      also keep the raw JSON lines in FILE
#
# Needs cargo, node (>= 20.19, for @medplum/core 4.5) and npm; the npm
# registry for `npm ci` and the examples package.

set -euo pipefail

die() {
    echo "peer.sh: $*" >&2
    exit 1
}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

rounds=${ROUNDS:-2}
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "ROUNDS=$rounds is not a positive number"
export N=${N:-1000} WARMUP=${WARMUP:-200} EXAMPLE_PASSES=${EXAMPLE_PASSES:-1}

for tool in cargo node npm tar; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' ||
    die "node $(node --version) is too old: @medplum/core 4.5 needs 20.19 or later"

pin=()
pin_cpu=${PIN_CPU:-1}
if [[ $pin_cpu != none ]]; then
    command -v taskset >/dev/null || die "taskset is not installed (util-linux); set PIN_CPU=none to run unpinned"
    [[ $pin_cpu =~ ^[0-9]+$ && $pin_cpu -lt $(nproc) ]] || die "PIN_CPU=$pin_cpu is not a CPU of this machine (0..$(($(nproc) - 1)))"
    pin=(taskset -c "$pin_cpu")
fi

if [[ -n ${R4_EXAMPLES_DIR:-} && ! -f ${R4_EXAMPLES_DIR}/package.json ]]; then
    die "R4_EXAMPLES_DIR=$R4_EXAMPLES_DIR has no package.json: give the unpacked package's package/ folder"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "peer.sh: installing the peer's packages (npm ci in benches/peer)" >&2
(cd benches/peer && npm ci --no-audit --no-fund --loglevel=error >&2) ||
    die "npm ci failed in benches/peer"

if [[ -z ${R4_EXAMPLES_DIR:-} ]]; then
    echo "peer.sh: fetching hl7.fhir.r4.examples@4.0.1 (npm pack) into $work" >&2
    (cd "$work" && npm pack hl7.fhir.r4.examples@4.0.1 --silent >/dev/null && tar xzf hl7.fhir.r4.examples-4.0.1.tgz) ||
        die "could not fetch or unpack hl7.fhir.r4.examples@4.0.1"
    R4_EXAMPLES_DIR=$work/package
fi
export R4_EXAMPLES_DIR

echo "peer.sh: building the Rust bench (not timed)" >&2
cargo bench --locked --bench validate_peer --no-run >&2 || die "cargo could not build benches/validate_peer.rs"

medplum_version=$(node -p 'require("./benches/peer/node_modules/@medplum/core/package.json").version')
results=$work/results.jsonl
: >"$results"
# Adds the round to each JSON line; anything else on standard output is an error.
tag() {
    while IFS= read -r line; do
        [[ $line == '{'* ]] || die "unexpected output from $1: $line"
        printf '{"round":%s,%s\n' "$2" "${line#\{}"
    done
}
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq 1 "$rounds"); do
    echo "peer.sh: round $round/$rounds: sprig (cargo bench --locked --bench validate_peer)" >&2
    "${pin[@]}" cargo bench --locked --bench validate_peer | tag sprig "$round" >>"$results" ||
        die "the Rust bench failed in round $round"
    echo "peer.sh: round $round/$rounds: medplum (node benches/peer/validate.mjs)" >&2
    "${pin[@]}" node benches/peer/validate.mjs | tag medplum "$round" >>"$results" ||
        die "the Node bench failed in round $round"
done
if [[ -n ${RESULTS:-} ]]; then
    cp "$results" "$RESULTS"
fi

cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
echo
echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores ($cpu), pinned to CPU ${pin_cpu}, load average $load_before before, $(cut -d' ' -f1-3 /proc/loadavg) after; rustc $(rustc --version | cut -d' ' -f2), node $(node --version | tr -d v), @medplum/core $medplum_version; N=$N, WARMUP=$WARMUP, EXAMPLE_PASSES=$EXAMPLE_PASSES, $rounds rounds"
echo
node benches/peer/report.mjs <"$results"
