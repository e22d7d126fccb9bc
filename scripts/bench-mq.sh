#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# What multi-queue costs, on ONE polling core: `vpmd-bench ring-loop` (rings
# filled once, the frontend only moves indexes; core 0) through a vpmd veth
# pair polled by one thread (`pmd.cores = [1]`), in these cells:
#
#   sq      ports with queues = 1, driven with --queues 1 (the single-queue path)
#   mq      ports with queues = 2, driven with --queues 2 (VIRTIO_NET_F_MQ, two
#           queue pairs per port, four TX streams on the one thread, frames
#           steered by flow hash over both RX queues of the peer)
#   mq-1    ports with queues = 2, driven with --queues 1 (an MQ port whose
#           driver uses one pair: the single-queue cost of an MQ port)
#   old-sq  with --old VPMD: that vpmd binary (e.g. built at 795175b, the
#           commit before multi-queue), queues = 1, --queues 1: the A/B of the
#           single-queue path before and after the MQ commit
#
# Every cell sends 64 flows per TX queue (--flows 64: UDP source ports), so the
# frames are the same everywhere and the MQ cells spread. Two cores hold one
# polling thread and one frontend: this shows the OVERHEAD of MQ on one core,
# never scaling (which needs a polling core per queue pair). The ratio mq / sq
# per size is the figure; the target is an overhead under 5 % (ratio >= 0.95).
#
# Rounds alternate the cells (the order rotates every round), a fresh vpmd per
# measurement; per cell and size the median, minimum and maximum Mpps (both
# directions together), the spread, the frontend's busy share of its core (well
# below 100 %: vpmd was the bottleneck), vpmd's busy share and cycles per frame
# (`vpmd stats --json` .threads), drops, per-RX-queue shares (MQ cells) and the
# checks. Results: bench/results/mq-YYYYMMDD-HHMMSS.md and .json, copied to
# mq-latest.md and mq-latest.json (--quick: mq-quick-latest.* only).
#
# Usage: scripts/bench-mq.sh [options]     (as root)
#   --quick               1 round, 2 s per measurement
#   --rounds N            rounds (default 5)
#   --duration S          seconds measured per run (default 5)
#   --warmup S            seconds before measuring (default 1)
#   --sizes "..."         frame sizes (default "64 1518")
#   --cells "..."         subset of "sq mq mq-1 old-sq" (default: all; old-sq
#                         only with --old)
#   --old VPMD            the vpmd binary of the old-sq cell
#   --out DIR             where results go (default bench/results)
#   --no-build            use target/release binaries as they are
#   --keep-work           keep the work dir (logs, configs, raw reports)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BL_NAME=bench-mq
# shellcheck source=scripts/bench-lib.sh
source "$REPO/scripts/bench-lib.sh"
# shellcheck source=scripts/vpmd-config.sh
source "$REPO/scripts/vpmd-config.sh"

ROUNDS=5 DURATION=5 WARMUP=1 SIZES="64 1518" QUICK=0 BUILD=1 FLOWS=64
CELLS="" OLD=""
OUT=$REPO/bench/results
CMDLINE="scripts/bench-mq.sh $*"
while (($#)); do
  case $1 in
    --quick) QUICK=1 ROUNDS=1 DURATION=2 WARMUP=0.5 ;;
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --sizes) SIZES=$2; shift ;;
    --cells) CELLS=$2; shift ;;
    --old) OLD=$2; shift ;;
    *) bl_common_option "$@"; shift $((BL_OPT_ARGS - 1)) ;;
  esac
  shift
done
[[ -n $CELLS ]] || { CELLS="sq mq mq-1"; [[ -n $OLD ]] && CELLS+=" old-sq"; }
for c in $CELLS; do
  [[ " sq mq mq-1 old-sq " == *" $c "* ]] || bl_die "unknown cell '$c'"
  [[ $c != old-sq || -x $OLD ]] || bl_die "cell old-sq needs --old VPMD (an executable)"
done

bl_binaries
BACK_CORE=1 FRONT_CORE=0
[[ $(id -u) -eq 0 ]] || bl_die "must run as root"
bl_work_dir bench-mq
bl_install_traps
bl_install jq
bl_build
MEAS=$W/measurements.jsonl
: >"$MEAS"
LOAD_START=$(bl_load_snapshot)

# cell_port_queues CELL / cell_front_queues CELL / cell_vpmd CELL.
cell_port_queues() { case $1 in mq | mq-1) echo 2 ;; *) echo 1 ;; esac; }
cell_front_queues() { case $1 in mq) echo 2 ;; *) echo 1 ;; esac; }
cell_vpmd() { if [[ $1 == old-sq ]]; then echo "$OLD"; else echo "$VPMD"; fi; }

vpmd_ready() { bl_alive "$BACK_PID" && grep -q "vpmd ready" "$1/vpmd.log"; }

# backend_start CELL: a fresh vpmd for CELL; sets D, BACK_PID, BIN.
backend_start() {
  D=$W/$1
  mkdir -p "$D"
  rm -f "$D/vm0.sock" "$D/vm1.sock"
  local q
  q=$(cell_port_queues "$1")
  # queues = 1 is the default: leave the key out (the old binary may not know it).
  vpmd_veth_config "$BACK_CORE" "$D/control.sock" "$D/vm0.sock" "$D/vm1.sock" server 1500 |
    if ((q > 1)); then sed "/^mtu = /a queues = $q"; else cat; fi >"$D/vpmd.toml"
  BIN=$(cell_vpmd "$1")
  bl_note "vpmd-$1" "$BIN run --config vpmd.toml   # vpmd.toml:"
  bl_note "vpmd-$1" "$(sed 's/^/    /' "$D/vpmd.toml")"
  : >"$D/vpmd.log"
  RUST_LOG=warn,vpmd=info "$BIN" run --config "$D/vpmd.toml" >>"$D/vpmd.out" 2>>"$D/vpmd.log" &
  BACK_PID=$!
  bl_register "$BACK_PID"
  bl_wait_for 30 "vpmd ready" vpmd_ready "$D"
}

# measure CELL SIZE ROUND: one ring-loop run; appends a JSON line to $MEAS.
measure() {
  local cell=$1 size=$2 round=$3 rc=0
  local cmd=("$VPMD_BENCH" ring-loop "$D/vm0.sock" "$D/vm1.sock" --size "$size"
    --queues "$(cell_front_queues "$cell")" --flows "$FLOWS" --duration "$DURATION"
    --warmup "$WARMUP" --core "$FRONT_CORE" --json)
  bl_note "front-$cell" "${cmd[*]}"
  "${cmd[@]}" >"$W/front.json" 2>"$W/front.err" || rc=$?
  if ((rc != 0)) || ! jq -e . "$W/front.json" >/dev/null 2>&1; then
    bl_log "ring-loop $cell $size B failed ($rc): $(tail -n 3 "$W/front.err")"
    jq -nc --arg c "$cell" --argjson s "$size" --argjson r "$round" --arg e "$(tail -n 1 "$W/front.err")" \
      '{cell: $c, size: $s, round: $r, failed: $e}' >>"$MEAS"
    return 1
  fi
  "$BIN" stats --control "$D/control.sock" --json >"$W/stats.json" 2>/dev/null || echo '{}' >"$W/stats.json"
  jq -c --arg c "$cell" --argjson s "$size" --argjson r "$round" --slurpfile st "$W/stats.json" '
    ($st[0].threads // [] | map(select(.frames > 0)) | first) as $t |
    {cell: $c, size: $s, round: $r, mpps: .total_mpps, gbps: .total_gbps,
     mpps_dir: [.directions[].mpps], queue_pairs: .queue_pairs, flows_per_queue: .flows_per_queue,
     rx_queue_share: [.totals[] | .received_per_queue as $q | ($q | add) as $n
       | $q | map(if $n > 0 then . / $n else 0 end)],
     front_busy_share: .frontend.busy_share, front_stalled_share: .frontend.stalled_share,
     front_cpu_share: .frontend.cpu_share, front_busy_cycles_per_frame: .frontend.busy_cycles_per_frame,
     vpmd_busy_share: (if $t then $t.busy_cycles / (($t.busy_cycles + $t.idle_cycles) | if . > 0 then . else 1 end) else null end),
     vpmd_cycles_per_frame: (if $t and $t.frames > 0 then $t.busy_cycles / $t.frames else null end),
     drops: .backend_drops, taken: (.totals | map(.taken) | add),
     rx_sampled: .checks.rx_sampled, checks_bad: (.checks.rx_bad + .checks.tx_out_of_order),
     first_problem: .checks.first_problem, steal_s: .steal.seconds}' "$W/front.json" >>"$MEAS"
  bl_log "  $cell $size B round $round: $(tail -n 1 "$MEAS" | jq -r '"\(.mpps * 1000 | round / 1000) Mpps, frontend busy \(.front_busy_share * 1000 | round / 10) %, RX queue shares \(.rx_queue_share | map(map(. * 100 | round)))"')"
}

# rotate N: the cells, rotated by N.
rotate() {
  local -a c
  read -ra c <<<"$CELLS"
  local n=${#c[@]} i
  for ((i = 0; i < n; i++)); do printf '%s ' "${c[(i + $1) % n]}"; done
}

for ((round = 1; round <= ROUNDS; round++)); do
  bl_log "round $round of $ROUNDS"
  for size in $SIZES; do
    for cell in $(rotate $((round - 1))); do
      if backend_start "$cell"; then
        bl_noted "vpmd-$cell"
        measure "$cell" "$size" "$round" || true
        bl_noted "front-$cell"
      else
        bl_log "vpmd ($cell) did not start"
        jq -nc --arg c "$cell" --argjson s "$size" --argjson r "$round" \
          '{cell: $c, size: $s, round: $r, failed: "vpmd did not start"}' >>"$MEAS"
      fi
      bl_stop_registered "$BACK_PID" 15
    done
  done
done

# ---------------------------------------------------------------- report

LOAD_END=$(bl_load_snapshot)
mkdir -p "$OUT"
NAME=mq-$(date +%Y%m%d-%H%M%S)
((QUICK)) && NAME=mq-quick-latest
keys=()
for c in $CELLS; do keys+=("vpmd-$c" "front-$c"); done
old_version=""
[[ -n $OLD ]] && old_version="$OLD ($("$OLD" --version 2>/dev/null || echo "no --version"))"
jq -n --argjson machine "$(bl_machine_json)" --arg cmd "$CMDLINE" \
  --argjson load_start "$LOAD_START" --argjson load_end "$LOAD_END" \
  --arg date "$(date -Is)" --argjson quick "$QUICK" \
  --arg vpmd "$("$VPMD" --version 2>/dev/null || echo "$VPMD")" --arg old "$old_version" \
  --argjson cfg "$(jq -n --argjson rounds "$ROUNDS" --arg d "$DURATION" --arg w "$WARMUP" \
    --arg s "$SIZES" --arg c "$CELLS" --argjson flows "$FLOWS" \
    '{rounds: $rounds, duration_s: ($d | tonumber), warmup_s: ($w | tonumber), flows_per_queue: $flows,
      sizes: ($s | split(" ") | map(select(. != "") | tonumber)), cells: ($c | split(" ") | map(select(. != "")))}')" \
  --argjson cmds "$(bl_cmds_json "${keys[@]}")" \
  --slurpfile m "$MEAS" '
  def stats: sort as $s | {median: $s[($s | length) / 2 | floor], min: $s[0], max: $s[-1], n: ($s | length)};
  def med(f): [.[] | f | select(. != null)] | if length > 0 then stats.median else null end;
  ($m | map(select(.failed == null)) | group_by([.size, .cell]) | map({key: "\(.[0].size)/\(.[0].cell)", value: (
      ([.[] | .mpps] | stats) as $st | $st + {
        spread: (if $st.median > 0 then ($st.max - $st.min) / $st.median else null end),
        front_busy_share: med(.front_busy_share), front_cpu_share: med(.front_cpu_share),
        front_busy_cycles_per_frame: med(.front_busy_cycles_per_frame),
        vpmd_busy_share: med(.vpmd_busy_share), vpmd_cycles_per_frame: med(.vpmd_cycles_per_frame),
        drop_share_median: med(if .taken > 0 then .drops / .taken else null end),
        rx_queue_share_min: ([.[] | .rx_queue_share[][]] | min),
        rx_sampled: ([.[] | .rx_sampled] | add), checks_bad: ([.[] | .checks_bad] | add),
        first_problem: ([.[] | .first_problem // empty] | first)})}) | from_entries) as $sum
  | def g($s; $c): $sum["\($s)/\($c)"].median // null;
  def r($s; $a; $b): if g($s; $a) and g($s; $b) then g($s; $a) / g($s; $b) else null end;
  # Per-round ratios (same round, same size): their median, min and max.
  def rr($s; $a; $b): [$m[] | select(.failed == null and .size == $s and .cell == $a) as $x
      | $m[] | select(.failed == null and .size == $s and .cell == $b and .round == $x.round)
      | $x.mpps / .mpps] | if length > 0 then stats else null end;
  {date: $date, quick: ($quick == 1), command: $cmd, machine: $machine, vpmd: $vpmd, old_vpmd: $old,
   load: {start: $load_start, end: $load_end}, config: $cfg, commands: $cmds, summary: $sum,
   ratios: ($cfg.sizes | map(. as $s | {key: "\($s)", value: {
       mq_over_sq: r($s; "mq"; "sq"), mq_over_sq_rounds: rr($s; "mq"; "sq"),
       mq1_over_sq: r($s; "mq-1"; "sq"), mq1_over_sq_rounds: rr($s; "mq-1"; "sq"),
       new_over_old: r($s; "sq"; "old-sq"), new_over_old_rounds: rr($s; "sq"; "old-sq")}}) | from_entries),
   measurements: $m}' >"$W/raw.json"
cp "$W/raw.json" "$OUT/$NAME.json"

jq -r '
  def esc: gsub("\\|"; "\\|");
  def f3: if . == null then "n/a" else (. * 1000 | round / 1000 | tostring) end;
  def f1: if . == null then "n/a" else (. * 10 | round / 10 | tostring) end;
  def pct: if . == null then "n/a" else "\(. * 1000 | round / 10) %" end;
  def ratio: if . == null then "n/a" else "\(. * 1000 | round / 1000)x (\((. - 1) * 1000 | round / 10) %)" end;
  def rounds: if . == null then "" else "; per round median \(.median | f3), \(.min | f3)..\(.max | f3)" end;
  "# Multi-queue overhead on one polling core (ring-loop --queues)\n",
  "\(.date)\(if .quick then " (quick run: one round, not for comparison)" else "" end)\n",
  "Machine: \(.machine.cores) cores, \(.machine.cpu), kernel \(.machine.kernel), \(.machine.os); vpmd: \(.vpmd)\(if .old_vpmd != "" then "; old-sq: \(.old_vpmd)" else "" end).",
  "Load average at start \(.load.start.loadavg), at end \(.load.end.loadavg); other busy processes at start: \(.load.start.others_busy // "none"), at end: \(.load.end.others_busy // "none").\n",
  "Command: `\(.command)`\n",
  "**Two cores cannot show scaling.** One core polls (vpmd, `pmd.cores = [1]`), the other runs the frontend;",
  "with every queue on the one polling thread, a second queue pair can only cost, never gain.",
  "What this measures is the overhead of multi-queue: the same traffic through ports with `queues = 2`",
  "(four TX streams on one thread, each frame hashed and steered to one of two RX queues) against",
  "`queues = 1`. Target: under 5 % (mq / sq >= 0.95). Scaling needs a polling core per queue pair.\n",
  "`vpmd-bench ring-loop` on core 0 (rings filled once, only indexes move), \(.config.flows_per_queue) flows per TX queue (UDP source ports),",
  "both directions; \(.config.rounds) round(s) of \(.config.duration_s) s after \(.config.warmup_s) s warm-up, cells alternating, a fresh vpmd per run; medians.",
  "Cells: sq = ports `queues = 1`, `--queues 1`; mq = `queues = 2`, `--queues 2`; mq-1 = `queues = 2`, `--queues 1`",
  "(an MQ port whose driver uses one pair); old-sq = the old binary, `queues = 1`, `--queues 1`.",
  "Frontend busy: the share of its core the frontend needed (well below 100 %: vpmd was the bottleneck); vpmd busy: its",
  "polling thread'\''s busy share (`vpmd stats --json` .threads) and busy cycles per frame.\n",
  "| size | cell | median Mpps (both directions) | min | max | spread | runs | frontend busy | vpmd busy | vpmd cycles/frame | dropped | smallest RX queue share | checks bad / sampled |",
  "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
  (.config.sizes[] as $s | .config.cells[] as $c | .summary["\($s)/\($c)"] as $x | select($x != null)
   | "| \($s) B | \($c) | \($x.median | f3) | \($x.min | f3) | \($x.max | f3) | \($x.spread | pct) | \($x.n) | \($x.front_busy_share | pct) | \($x.vpmd_busy_share | pct) | \($x.vpmd_cycles_per_frame | f1) | \($x.drop_share_median | pct) | \(if $c == "mq" then ($x.rx_queue_share_min | pct) else "-" end) | \($x.checks_bad) / \($x.rx_sampled)\(if $x.checks_bad > 0 then " (first: \($x.first_problem | esc))" else "" end) |"),
  "",
  "Ratios of medians (and of the runs of one round):\n",
  (.ratios | to_entries[] | .key as $s | .value
   | "- \($s) B: mq / sq \(.mq_over_sq | ratio)\(.mq_over_sq_rounds | rounds); mq-1 / sq \(.mq1_over_sq | ratio)\(.mq1_over_sq_rounds | rounds)\(if .new_over_old then "; sq / old-sq (after / before the MQ commit) \(.new_over_old | ratio)\(.new_over_old_rounds | rounds)" else "" end)"),
  "",
  "Failed runs: \([.measurements[] | select(.failed != null) | "\(.cell) \(.size) B round \(.round): \(.failed)"] | if length == 0 then "none" else join("; ") end)\n",
  "## Exact commands\n",
  (.commands | to_entries[] | select(.value - [""] != []) | "\(.key):\n\n```\n\(.value | join("\n"))\n```\n")
' "$W/raw.json" >"$OUT/$NAME.md"
((QUICK)) || { cp "$OUT/$NAME.md" "$OUT/mq-latest.md"; cp "$OUT/$NAME.json" "$OUT/mq-latest.json"; }
cat "$OUT/$NAME.md"
bl_log "results: $OUT/$NAME.md and $OUT/$NAME.json"
