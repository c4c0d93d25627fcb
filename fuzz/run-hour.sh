#!/usr/bin/env bash
# Issue 19's fuzzing hour: two streams, targets round-robin in 240 s slices, niced, CPU counted
# by /usr/bin/time (user+sys); stops when the streams together reach GOAL CPU-seconds or at DEADLINE.
set -u
cd "$(dirname "$0")"
BIN=${BIN:-${CARGO_TARGET_DIR:-../target}/debug}
LOG=${LOG:-logs}; mkdir -p "$LOG"
# libFuzzer's -timeout is wall-clock: on a loaded machine a niced fuzzer waits for a core, so
# TIMEOUT (default 1 s) may be raised while loaded; each slice's final stats report its slowest unit.
GOAL=${GOAL:-3600}
DEADLINE=${DEADLINE:-$(( $(date +%s) + 7200 ))}
targets=(json_reader validate_referral fhirpath search_params testscript)
mkdir -p artifacts
for t in "${targets[@]}"; do mkdir -p corpus/$t; done
total_cpu() { awk '/^cpu /{s+=$2} END{printf "%d", s+0}' $LOG/cpu.txt 2>/dev/null || echo 0; }
stream() {
  local s=$1 i=$1
  while :; do
    local cpu; cpu=$(total_cpu)
    [ "$cpu" -ge "$GOAL" ] && break
    [ "$(date +%s)" -ge "$DEADLINE" ] && break
    local t=${targets[$((i % ${#targets[@]}))]}; i=$((i+1))
    local left=$(( DEADLINE - $(date +%s) )); [ $left -gt 240 ] && left=240; [ $left -lt 10 ] && break
    local out=$LOG/$t.$s.$i.log
    nice -n 15 /usr/bin/time -v $BIN/$t corpus/$t seeds/$t -timeout=${TIMEOUT:-1} -rss_limit_mb=256 -max_len=65536 \
        -max_total_time=$left -artifact_prefix=artifacts/ -print_final_stats=1 > $out 2>&1
    local rc=$?
    local u; u=$(awk -F: '/User time/{print $2}' $out); local sy; sy=$(awk -F: '/System time/{print $2}' $out)
    local rss; rss=$(awk -F: '/Maximum resident/{print $2}' $out)
    echo "cpu $(python3 -c "print(round($u+$sy))") $t stream=$s rc=$rc rss_kb=$rss $(grep -o 'stat::number_of_executed_units: [0-9]*' $out) $(grep -o 'cov: [0-9]*' $out | tail -1) $(date -u +%H:%M:%S)" >> $LOG/cpu.txt
  done
}
stream 0 & stream 1 & wait
echo "finished total_cpu=$(total_cpu) at $(date -u)" >> $LOG/cpu.txt
