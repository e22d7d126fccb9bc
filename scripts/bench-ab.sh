#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# A/B of two vpmd binaries with the backend-alone benchmark: each round runs
# both (order alternating round by round) on vpmd's built-in configuration
# (ports vm0/vm1 in /run/vpmd, polling core 1) with `vpmd-bench ring-loop` on
# core 0, at each size. Prints one raw JSON line per run to OUT and, per size,
# both binaries' Mpps per direction round by round, their medians and best
# rounds, and the median of the per-round ratios B/A.
#
# Usage: scripts/bench-ab.sh A_VPMD B_VPMD [--rounds N] [--sizes "64 1518"]
#          [--duration S] [--out FILE]        (as root; stop any running vpmd first)
# Environment: VPMD_BENCH (default target/release/vpmd-bench).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
A=${1:?usage: bench-ab.sh A_VPMD B_VPMD [options]} B=${2:?usage: bench-ab.sh A_VPMD B_VPMD [options]}
shift 2
ROUNDS=10 SIZES="64 1518" DURATION=4 OUT=$(mktemp /tmp/vpmd-bench-ab.XXXXXX)
while (($#)); do
  case $1 in
    --rounds) ROUNDS=$2; shift ;;
    --sizes) SIZES=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --out) OUT=$2; shift ;;
    *) echo "bench-ab.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
BENCH=${VPMD_BENCH:-$REPO/target/release/vpmd-bench}
for b in "$A" "$B" "$BENCH"; do [[ -x $b ]] || { echo "bench-ab.sh: $b is not executable" >&2; exit 1; }; done
[[ -e /run/vpmd/vm0.sock ]] && { echo "bench-ab.sh: /run/vpmd/vm0.sock exists: is a vpmd running?" >&2; exit 1; }

PID=""
trap '[[ -n $PID ]] && kill -TERM "$PID" 2>/dev/null; wait 2>/dev/null' EXIT
: >"$OUT"
for r in $(seq 1 "$ROUNDS"); do
  for size in $SIZES; do
    if ((r % 2)); then order="A B"; else order="B A"; fi
    for label in $order; do
      bin=$A; [[ $label == B ]] && bin=$B
      "$bin" run >/dev/null 2>&1 &
      PID=$!
      for _ in $(seq 100); do [[ -S /run/vpmd/vm1.sock ]] && break; sleep 0.1; done
      json=$("$BENCH" ring-loop /run/vpmd/vm0.sock /run/vpmd/vm1.sock --size "$size" \
        --duration "$DURATION" --warmup 1 --core 0 --json) || json=null
      kill -TERM "$PID"; wait "$PID" || true; PID=""
      jq -nc --arg l "$label" --argjson r "$r" --argjson s "$size" --argjson j "$json" \
        '{label: $l, round: $r, size: $s, run: $j}' >>"$OUT"
      sleep 0.5
    done
  done
done

echo "A = $A"
echo "B = $B"
echo "raw runs: $OUT (ring-loop, $ROUNDS rounds, ${DURATION} s each, order alternating)"
jq -rs '
  def med: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
           else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def r2: . * 100 | round / 100;
  def mpps: if .run == null then null else ([.run.directions[].mpps] | add / length) end;
  group_by(.size)[] | . as $runs | ($runs[0].size) as $size
  | ([$runs[] | select(.label == "A") | mpps]) as $a
  | ([$runs[] | select(.label == "B") | mpps]) as $b
  | ([range(0; [$a, $b] | map(length) | min)] | map(select($a[.] != null and $b[.] != null) | $b[.] / $a[.])) as $ratio
  | "\($size) B  A Mpps/direction: \($a | map(r2) | join(" "))",
    "\($size) B  B Mpps/direction: \($b | map(r2) | join(" "))",
    "\($size) B  median A \($a | map(select(. != null)) | med | r2)  B \($b | map(select(. != null)) | med | r2);  best A \($a | max | r2)  B \($b | max | r2);  median of B/A per round \($ratio | med | . * 1000 | round / 1000);  frontend busy share max \([$runs[].run.frontend.busy_share // 0] | max | . * 1000 | round / 1000)"
' "$OUT"
