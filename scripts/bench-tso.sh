#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# The backend's own cost for TSO traffic, side by side: `vpmd-bench ring-loop
# --tso` (rings filled once, the frontend only moves indexes) sends 64 KiB
# TCP/IPv4 TSO frames from port A to port B through one backend polling on core
# 1, the frontend on core 0, in three cells by what port B negotiates:
#
#   pass      GUEST_TSO4 + GUEST_CSUM: the backend may pass each frame whole, into
#             one RX buffer that holds it
#   pass-mrg  the same into mergeable RX buffers of 4 KiB (MRG_RXBUF), about what
#             a Linux guest posts: 16 buffers per frame
#   seg-csum  GUEST_CSUM only: the backend segments (checksums may stay partial)
#   seg-none  neither: the backend segments and fills every checksum in
#
#   backends  vpmd            one veth pair, default config (every offload on)
#             testpmd         dpdk-testpmd, net_vhost ...,tso=1 on both ports, io
#                             forwarding (pass cells only: io forwarding does not segment)
#             testpmd-legacy  the same with legacy-ol-flags=1 and 64 KiB mbufs
#                             (--mbuf-size=65535): the GSO request passes on in the
#                             header instead of testpmd completing the checksum of
#                             each 64 KiB frame in software (pass cells only)
#             testpmd-gso     tso=1,legacy-ol-flags=1, csum forwarding with
#                             `set port 1 gso on`, `set gso segsz` = MSS + 54 (the
#                             seg cells: the only way testpmd segments; its GSO
#                             leaves TCP checksums to a NIC, and net_vhost offers no
#                             TX checksum offload, so its segments' TCP checksums are
#                             wrong: the sampled checks say so and the report marks it)
#
# Rounds alternate the backends (the order rotates every round); per cell and
# backend the table gives the median, minimum and maximum Gbit/s of TCP payload
# delivered (the backend busy-polls one core: this is also Gbit/s per backend
# core), frames/s and segments/s, the frontend's busy share of its core (well
# below 1: the backend was the bottleneck), drops and the checks; the ratios
# vpmd / best testpmd per cell; the machine and the exact commands. Results:
# bench/results/tso-YYYYMMDD-HHMMSS.md and .json, copied to tso-latest.md and
# tso-latest.json (--quick: tso-quick-latest.* only).
#
# Installs dpdk and jq when missing, reserves hugepages (scripts/hugepages.sh),
# and on exit or interrupt stops every process it started and removes its
# hugepage files and sockets.
#
# Usage: scripts/bench-tso.sh [options]     (as root)
#   --quick               1 round, 2 s per measurement
#   --rounds N            rounds (default 5)
#   --duration S          seconds measured per run (default 5)
#   --warmup S            seconds before measuring (default 1)
#   --size BYTES          TSO frame size (default 64294: 54 + 44 x 1460)
#   --mss N               gso_size (default 1460: MTU 1500, no TCP options)
#   --cells "..."         subset of "pass pass-mrg seg-csum seg-none"
#   --backends "..."      subset of "vpmd testpmd testpmd-legacy testpmd-gso"
#   --out DIR             where results go (default bench/results)
#   --no-build            use target/release binaries as they are
#   --keep-work           keep the work dir (logs, configs, raw reports)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BL_NAME=bench-tso
# shellcheck source=scripts/bench-lib.sh
source "$REPO/scripts/bench-lib.sh"
# shellcheck source=scripts/vpmd-config.sh
source "$REPO/scripts/vpmd-config.sh"

ROUNDS=5 DURATION=5 WARMUP=1 SIZE=64294 MSS=1460 QUICK=0 BUILD=1
CELLS="pass pass-mrg seg-csum seg-none" BACKENDS="vpmd testpmd testpmd-legacy testpmd-gso"
OUT=$REPO/bench/results
CMDLINE="scripts/bench-tso.sh $*"
while (($#)); do
  case $1 in
    --quick) QUICK=1 ROUNDS=1 DURATION=2 WARMUP=0.5 ;;
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --size) SIZE=$2; shift ;;
    --mss) MSS=$2; shift ;;
    --cells) CELLS=$2; shift ;;
    --backends) BACKENDS=$2; shift ;;
    *) bl_common_option "$@"; shift $((BL_OPT_ARGS - 1)) ;;
  esac
  shift
done
for c in $CELLS; do
  [[ " pass pass-mrg seg-csum seg-none " == *" $c "* ]] || bl_die "unknown cell '$c'"
done
for b in $BACKENDS; do
  [[ " vpmd testpmd testpmd-legacy testpmd-gso " == *" $b "* ]] || bl_die "unknown backend '$b'"
done

bl_binaries
BACK_CORE=1 FRONT_CORE=0 P_BACK=vbtback
[[ $(id -u) -eq 0 ]] || bl_die "must run as root (hugepages, apt-get)"
bl_work_dir bench-tso
BL_PREFIXES=("$P_BACK")
bl_install_traps
bl_install dpdk jq psmisc
bl_build
"$REPO/scripts/hugepages.sh" 1024 "${BL_PREFIXES[@]}" >/dev/null || bl_die "hugepages setup failed"
bl_clean_dpdk
MEAS=$W/measurements.jsonl
: >"$MEAS"
LOAD_START=$(bl_load_snapshot)

# rx_offloads CELL: what port B negotiates (vpmd-bench --rx-offloads).
rx_offloads() {
  case $1 in pass | pass-mrg) echo tso ;; seg-csum) echo csum ;; seg-none) echo none ;; esac
}

# rx_buf_args CELL: B's RX buffer size, if not a whole frame.
rx_buf_args() { [[ $1 != pass-mrg ]] || echo --rx-buf 4096; }

# applies BACKEND CELL: whether BACKEND is measured in CELL.
applies() {
  case $1 in
    vpmd) return 0 ;;
    testpmd | testpmd-legacy) [[ $2 == pass* ]] ;;
    testpmd-gso) [[ $2 == seg-* ]] ;;
  esac
}

# backend_start NAME: sets SOCK_A, SOCK_B, BACK_PID (and BACK_FD for testpmd).
backend_start() {
  local d=$W/$1
  mkdir -p "$d"
  case $1 in
    vpmd)
      SOCK_A=$d/vm0.sock SOCK_B=$d/vm1.sock
      rm -f "$SOCK_A" "$SOCK_B"
      vpmd_veth_config "$BACK_CORE" "$d/control.sock" "$SOCK_A" "$SOCK_B" server 1500 >"$d/vpmd.toml"
      bl_note vpmd "$VPMD run --config vpmd.toml   # vpmd.toml:"
      bl_note vpmd "$(sed 's/^/    /' "$d/vpmd.toml")"
      : >"$d/vpmd.log"
      RUST_LOG=warn,vpmd=info "$VPMD" run --config "$d/vpmd.toml" >>"$d/vpmd.out" 2>>"$d/vpmd.log" &
      BACK_PID=$!
      bl_register "$BACK_PID"
      bl_wait_for 30 "vpmd ready" vpmd_ready "$d"
      ;;
    testpmd*)
      SOCK_A=$d/a.sock SOCK_B=$d/b.sock
      rm -f "$SOCK_A" "$SOCK_B"
      local vx=",tso=1" mbufs=(--total-num-mbufs=32768) cmds=(start)
      [[ $1 == testpmd ]] || vx+=",legacy-ol-flags=1"
      [[ $1 == testpmd-legacy ]] && mbufs=(--total-num-mbufs=4096 --mbuf-size=65535)
      [[ $1 == testpmd-gso ]] &&
        cmds=("set fwd csum" "set port 1 gso on" "set gso segsz $((MSS + 54))" start)
      local args=(-l "0,$BACK_CORE" --main-lcore 0 --no-pci --single-file-segments
        "--file-prefix=$P_BACK" --vdev "net_vhost0,iface=$SOCK_A$vx"
        --vdev "net_vhost1,iface=$SOCK_B$vx" -- -i --forward-mode=io "${mbufs[@]}")
      bl_note "$1" "dpdk-testpmd ${args[*]}"
      local c
      for c in "${cmds[@]}"; do bl_note "$1" "testpmd> $c"; done
      : >"$d/testpmd.log"
      bl_tp_start back "$d/testpmd.log" "${args[@]}" || return 1
      BACK_PID=$TP_PID BACK_FD=$TP_FD
      for c in "${cmds[@]}"; do
        bl_tp_cmd "$BACK_FD" "$d/testpmd.log" "$c" || return 1
      done
      bl_wait_for 30 "testpmd's vhost sockets" test -S "$SOCK_B" || return 1
      ;;
  esac
}

vpmd_ready() { bl_alive "$BACK_PID" && grep -q "vpmd ready" "$1/vpmd.log"; }

backend_stop() {
  case $1 in
    vpmd) bl_stop_registered "$BACK_PID" 15 ;;
    testpmd*) bl_tp_quit "$BACK_PID" "$BACK_FD" ;;
  esac
  bl_clean_dpdk
}

# measure BACKEND CELL ROUND: one ring-loop run; appends a JSON line to $MEAS.
measure() {
  local back=$1 cell=$2 round=$3 no_config=() rx_buf
  [[ $back == vpmd ]] || no_config=(--no-config)
  read -ra rx_buf <<<"$(rx_buf_args "$cell")"
  local cmd=("$VPMD_BENCH" "${no_config[@]}" ring-loop "$SOCK_A" "$SOCK_B" --size "$SIZE"
    --tso "$MSS" --rx-offloads "$(rx_offloads "$cell")" "${rx_buf[@]}" --duration "$DURATION" --warmup "$WARMUP"
    --core "$FRONT_CORE" --huge --json)
  bl_note "front-$back-$cell" "${cmd[*]}"
  local rc=0
  "${cmd[@]}" >"$W/front.json" 2>"$W/front.err" || rc=$?
  if ((rc != 0)) || ! jq -e . "$W/front.json" >/dev/null 2>&1; then
    bl_log "vpmd-bench through $back ($cell) failed ($rc): $(tail -n 3 "$W/front.err")"
    jq -nc --arg b "$back" --arg c "$cell" --argjson r "$round" --arg e "$(tail -n 1 "$W/front.err")" \
      '{backend: $b, cell: $c, round: $r, failed: $e}' >>"$MEAS"
    return 1
  fi
  jq -c --arg b "$back" --arg c "$cell" --argjson r "$round" '{backend: $b, cell: $c, round: $r,
    payload_gbps: .tso.payload_gbps, frames_mpps: .tso.frames_mpps, segments_mpps: .tso.segments_mpps,
    wire_gbps: .directions[0].gbps, rx_entries_mpps: .directions[0].mpps, taken_mpps: .directions[0].taken_mpps,
    front_busy_share: .frontend.busy_share, front_stalled_share: .frontend.stalled_share,
    front_cpu_share: .frontend.cpu_share, drops: .totals[0].backend_drops, taken: .totals[0].taken,
    received: .totals[0].received, rx_sampled: .checks.rx_sampled,
    checks_bad: (.checks.rx_bad + .checks.tx_out_of_order), first_problem: .checks.first_problem,
    offload_completed: .checks.rx_offload_completed, steal_s: .steal.seconds}' "$W/front.json" >>"$MEAS"
  bl_log "  $back $cell round $round: $(tail -n 1 "$MEAS" | jq -r '"\(.payload_gbps * 100 | round / 100) Gbit/s payload, \(.segments_mpps * 1000 | round / 1000) Mseg/s, frontend busy \(.front_busy_share * 1000 | round / 10) %, bad checks \(.checks_bad)"')"
}

# rotate N: the backends, rotated by N.
rotate() {
  local -a b
  read -ra b <<<"$BACKENDS"
  local n=${#b[@]} i
  for ((i = 0; i < n; i++)); do printf '%s ' "${b[(i + $1) % n]}"; done
}

for ((round = 1; round <= ROUNDS; round++)); do
  bl_log "round $round of $ROUNDS"
  for back in $(rotate $((round - 1))); do
    for cell in $CELLS; do
      applies "$back" "$cell" || continue
      # A fresh backend per measurement: nothing carried over from the last cell.
      if backend_start "$back"; then
        bl_noted "$back"
        measure "$back" "$cell" "$round" || true
        bl_noted "front-$back-$cell"
      else
        bl_log "$back did not start"
        jq -nc --arg b "$back" --arg c "$cell" --argjson r "$round" \
          '{backend: $b, cell: $c, round: $r, failed: "backend did not start"}' >>"$MEAS"
      fi
      backend_stop "$back"
    done
  done
done

# ---------------------------------------------------------------- report

LOAD_END=$(bl_load_snapshot)
mkdir -p "$OUT"
NAME=tso-$(date +%Y%m%d-%H%M%S)
((QUICK)) && NAME=tso-quick-latest
keys=(vpmd testpmd testpmd-legacy testpmd-gso)
for back in $BACKENDS; do for cell in $CELLS; do applies "$back" "$cell" && keys+=("front-$back-$cell"); done; done
jq -n --argjson machine "$(bl_machine_json)" --arg cmd "$CMDLINE" \
  --argjson load_start "$LOAD_START" --argjson load_end "$LOAD_END" \
  --arg date "$(date -Is)" --argjson quick "$QUICK" --arg vpmd "$("$VPMD" --version 2>/dev/null || echo "$VPMD")" \
  --argjson cfg "$(jq -n --argjson rounds "$ROUNDS" --arg d "$DURATION" --arg w "$WARMUP" \
    --argjson size "$SIZE" --argjson mss "$MSS" --arg c "$CELLS" --arg b "$BACKENDS" \
    '{rounds: $rounds, duration_s: ($d | tonumber), warmup_s: ($w | tonumber), size: $size, mss: $mss,
      cells: ($c | split(" ") | map(select(. != ""))), backends: ($b | split(" ") | map(select(. != "")))}')" \
  --argjson cmds "$(bl_cmds_json "${keys[@]}")" \
  --slurpfile m "$MEAS" '
  def stats: sort as $s | {median: $s[($s | length) / 2 | floor], min: $s[0], max: $s[-1], n: ($s | length)};
  def med(f): [.[] | f | select(. != null)] | if length > 0 then stats.median else null end;
  ($m | map(select(.failed == null)) | group_by([.cell, .backend]) | map({key: "\(.[0].cell)/\(.[0].backend)", value: (
      ([.[] | .payload_gbps] | stats) + {
        frames_mpps: med(.frames_mpps), segments_mpps: med(.segments_mpps), wire_gbps: med(.wire_gbps),
        taken_mpps: med(.taken_mpps), front_busy_share: med(.front_busy_share),
        front_cpu_share: med(.front_cpu_share), drops_median: med(.drops),
        drop_share_median: med(if .taken > 0 then .drops / (.received + .drops) else null end),
        rx_sampled: ([.[] | .rx_sampled] | add), checks_bad: ([.[] | .checks_bad] | add),
        offload_completed: ([.[] | .offload_completed] | add),
        first_problem: ([.[] | .first_problem // empty] | first)})}) | from_entries) as $sum
  | def g($c; $b): $sum["\($c)/\($b)"].median // null;
  def best($c; $bs): [$bs[] as $b | select($sum["\($c)/\($b)"] != null) | {b: $b, v: g($c; $b)}] | max_by(.v);
  {date: $date, quick: ($quick == 1), command: $cmd, machine: $machine, vpmd: $vpmd,
   load: {start: $load_start, end: $load_end}, config: $cfg, commands: $cmds, summary: $sum,
   ratios: ($cfg.cells | map(. as $c | best($c; ["testpmd", "testpmd-legacy", "testpmd-gso"]) as $ref
     | {key: $c, value: (if g($c; "vpmd") and $ref then {over: $ref.b, ratio: (g($c; "vpmd") / $ref.v),
         reference_checks_bad: $sum["\($c)/\($ref.b)"].checks_bad} else null end)}) | from_entries),
   measurements: $m}' >"$W/raw.json"
cp "$W/raw.json" "$OUT/$NAME.json"

jq -r '
  def esc: gsub("\\|"; "\\|");
  def f: if . == null then "n/a" else (. * 100 | round / 100 | tostring) end;
  def f3: if . == null then "n/a" else (. * 1000 | round / 1000 | tostring) end;
  def pct: if . == null then "n/a" else "\(. * 1000 | round / 10) %" end;
  "# TSO through the backend alone (ring-loop --tso)\n",
  "\(.date)\(if .quick then " (quick run: one round, not for comparison)" else "" end)\n",
  "Machine: \(.machine.cores) cores, \(.machine.cpu), kernel \(.machine.kernel), \(.machine.os); DPDK \(.machine.dpdk); vpmd: \(.vpmd).",
  "Load average at start \(.load.start.loadavg), at end \(.load.end.loadavg); other busy processes at start: \(.load.start.others_busy // "none").\n",
  "Command: `\(.command)`\n",
  "`vpmd-bench ring-loop --tso \(.config.mss) --size \(.config.size)` on core 0 sends TCP/IPv4 TSO frames of \(.config.size) bytes",
  "(\(.config.size - 54) payload bytes, gso_size \(.config.mss), NEEDS_CSUM) from port A to port B through one backend polling core 1;",
  "B negotiates GUEST_TSO4 + GUEST_CSUM (pass, pass-mrg), GUEST_CSUM only (seg-csum) or neither (seg-none); its RX buffers each hold a whole frame, except in pass-mrg (mergeable buffers of 4 KiB, 16 per frame).",
  "\(.config.rounds) round(s) of \(.config.duration_s) s, backends alternating; medians. Every backend busy-polls one core, so Gbit/s is also Gbit/s per backend core.",
  "Frontend busy: the share of its core the frontend needed (well below 100 %: the backend was the bottleneck).\n",
  "| cell | backend | median Gbit/s payload | min | max | runs | M frames/s | M segments/s | frontend busy | dropped (share of segments) | checks bad / sampled |",
  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
  (.config.cells[] as $c | .config.backends[] as $b | .summary["\($c)/\($b)"] as $s | select($s != null)
   | "| \($c) | \($b) | \($s.median | f) | \($s.min | f) | \($s.max | f) | \($s.n) | \($s.frames_mpps | f3) | \($s.segments_mpps | f3) | \($s.front_busy_share | pct) | \($s.drop_share_median | pct) | \($s.checks_bad) / \($s.rx_sampled)\(if $s.checks_bad > 0 then " (first: \($s.first_problem | esc))" else "" end)\(if $s.offload_completed > 0 then "; \($s.offload_completed) passed with the checksum completed, GSO request dropped" else "" end) |"),
  "",
  "Ratios of medians, vpmd / the fastest testpmd of the cell:\n",
  (.ratios | to_entries[] | select(.value != null)
   | "- \(.key): \(.value.ratio | f)x \(.value.over)\(if .value.reference_checks_bad > 0 then " (whose output failed the checks: its figure is not a valid segmentation)" else "" end)"),
  "",
  "Failed runs: \([.measurements[] | select(.failed != null) | "\(.backend) \(.cell) round \(.round): \(.failed)"] | if length == 0 then "none" else join("; ") end)\n",
  "## Exact commands\n",
  (.commands | to_entries[] | select(.value - [""] != []) | "\(.key):\n\n```\n\(.value | join("\n"))\n```\n")
' "$W/raw.json" >"$OUT/$NAME.md"
((QUICK)) || { cp "$OUT/$NAME.md" "$OUT/tso-latest.md"; cp "$OUT/$NAME.json" "$OUT/tso-latest.json"; }
cat "$OUT/$NAME.md"
bl_log "results: $OUT/$NAME.md and $OUT/$NAME.json"
