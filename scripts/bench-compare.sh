#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Compares vhost-user switches on this machine, each with exactly one polling
# core (core 1), driven by the same loopback frontends on the other core (0):
#
#   backends   testpmd  DPDK's dpdk-testpmd, two net_vhost ports, io forwarding
#              vpmd     vpmd run --config (one veth pair, [pmd] cores = [1])
#              ovs      Open vSwitch with DPDK, two dpdkvhostuser ports,
#                       flows in_port=1,actions=output:2 and back
#   frontends  testpmd     DPDK net_virtio_user ports, io forwarding, start tx_first 32
#              vpmd-bench  vpmd-bench loopback (zero-copy io forwarding, 32 bursts injected)
#              ring-loop   vpmd-bench ring-loop: the backend alone (rings filled once, only
#                          indexes moved; its own table, with its busy share, drops, steal)
#   sizes      64 256 1024 1518 bytes (Ethernet frame without FCS, as testpmd --txpkts)
#
# Contenders alternate round by round (backend order rotates every round); the
# table gives the median of the rounds (3, more up to --max-rounds where the
# spread is wide), Mpps and Gbit/s per direction, the ratios vpmd/DPDK and
# vpmd/OVS, the backends' CPU cycles per frame on their polling core, and vpmd's
# resident memory without guest mappings. Results: bench/results/ (Markdown, JSON).
#
# Installs dpdk, dpdk-dev and openvswitch-switch-dpdk when missing, reserves
# hugepages (scripts/hugepages.sh), and on exit or interrupt stops every process
# it started and removes their hugepage files, OVS database and sockets.
#
# Usage: scripts/bench-compare.sh [options]     (as root)
#   --quick               1 round, 64 B only, 2 s per measurement (smoke test)
#   --rounds N            rounds for every contender (default 3)
#   --max-rounds N        rounds where the spread is wide (default 5)
#   --sizes "64 256"      frame sizes (default "64 256 1024 1518")
#   --duration S          seconds measured per run (default 5)
#   --warmup S            seconds forwarded before measuring (default 1)
#   --backends "..."      subset of "testpmd vpmd ovs"
#   --frontends "..."     subset of "testpmd vpmd-bench ring-loop"
#   --out DIR             where results go (default bench/results)
#   --no-build            use target/release binaries as they are
#   --keep-work           keep the work dir (logs, configs)
# Environment: VPMD, VPMD_BENCH (binaries), BENCH_HUGE=0 (vpmd-bench without
# hugepage guest memory).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/bench-lib.sh
source "$REPO/scripts/bench-lib.sh"
# shellcheck source=scripts/vpmd-config.sh
source "$REPO/scripts/vpmd-config.sh"

ROUNDS=3 MAX_ROUNDS=5 SIZES="64 256 1024 1518" DURATION=5 WARMUP=1
BACKENDS="testpmd vpmd ovs" FRONTENDS="testpmd vpmd-bench ring-loop" OUT=$REPO/bench/results
BUILD=1 QUICK=0 SPREAD_WIDE=0.15
while (($#)); do
  case $1 in
    --quick) QUICK=1 ROUNDS=1 MAX_ROUNDS=1 SIZES=64 DURATION=2 WARMUP=0.5 ;;
    --rounds) ROUNDS=$2; shift ;;
    --max-rounds) MAX_ROUNDS=$2; shift ;;
    --sizes) SIZES=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --backends) BACKENDS=$2; shift ;;
    --frontends) FRONTENDS=$2; shift ;;
    *) bl_common_option "$@"; shift $((BL_OPT_ARGS - 1)) ;;
  esac
  shift
done
((MAX_ROUNDS >= ROUNDS)) || MAX_ROUNDS=$ROUNDS

bl_binaries
BENCH_HUGE=${BENCH_HUGE:-1}
BACK_CORE=1 FRONT_CORE=0
P_FRONT=vbcfront P_BACK=vbcback P_OVS=vbcovs

[[ $(id -u) -eq 0 ]] || bl_die "must run as root (hugepages, apt-get)"
bl_work_dir bench-compare
BL_PREFIXES=("$P_FRONT" "$P_BACK" "$P_OVS")
bl_install_traps

# ---------------------------------------------------------------- setup

bl_install dpdk dpdk-dev openvswitch-switch-dpdk linux-perf jq psmisc
[[ -x $BL_OVS_VSWITCHD ]] || bl_die "$BL_OVS_VSWITCHD missing after installing openvswitch-switch-dpdk"
bl_build
"$REPO/scripts/hugepages.sh" 1024 "${BL_PREFIXES[@]}" >/dev/null || bl_die "hugepages setup failed"
bl_clean_dpdk

PERF=0
bl_perf_works && PERF=1
MEAS=$W/measurements.jsonl
: >"$MEAS"
LOAD_START=$(bl_load_snapshot)


# ---------------------------------------------------------------- backends
# backend_start NAME: sets SOCK_A, SOCK_B, BACK_PID (and BACK_FD for testpmd).

backend_start() {
  mkdir -p "$W/$1"
  case $1 in
    testpmd)
      SOCK_A=$W/testpmd/a.sock SOCK_B=$W/testpmd/b.sock
      rm -f "$SOCK_A" "$SOCK_B"
      local args=(-l "0,$BACK_CORE" --main-lcore 0 --no-pci --single-file-segments
        "--file-prefix=$P_BACK" --vdev "net_vhost0,iface=$SOCK_A" --vdev "net_vhost1,iface=$SOCK_B"
        -- -i --forward-mode=io --total-num-mbufs=16384)
      bl_note testpmd "dpdk-testpmd ${args[*]}"
      bl_note testpmd "testpmd> set record-core-cycles on"
      bl_note testpmd "testpmd> start"
      bl_tp_start back "$W/testpmd/testpmd.log" "${args[@]}" || return 1
      BACK_PID=$TP_PID BACK_FD=$TP_FD
      bl_tp_cmd "$BACK_FD" "$W/testpmd/testpmd.log" "set record-core-cycles on" &&
        bl_tp_cmd "$BACK_FD" "$W/testpmd/testpmd.log" start
      ;;
    vpmd)
      SOCK_A=$W/vpmd/vm0.sock SOCK_B=$W/vpmd/vm1.sock
      vpmd_veth_config "$BACK_CORE" "$W/vpmd/control.sock" "$SOCK_A" "$SOCK_B" server 1500 \
        >"$W/vpmd/vpmd.toml"
      bl_note vpmd "$VPMD run --config vpmd.toml   # vpmd.toml:"
      bl_note vpmd "$(sed 's/^/    /' "$W/vpmd/vpmd.toml")"
      RUST_LOG=warn,vpmd=info "$VPMD" run --config "$W/vpmd/vpmd.toml" \
        >>"$W/vpmd/vpmd.out" 2>>"$W/vpmd/vpmd.log" &
      BACK_PID=$!
      bl_register "$BACK_PID"
      bl_wait_for 30 "vpmd ready" vpmd_ready
      ;;
    ovs)
      SOCK_A=$W/ovs/vhost0 SOCK_B=$W/ovs/vhost1
      bl_ovs_start "$W/ovs" "$BACK_CORE" "$P_OVS" || return 1
      BACK_PID=$BL_OVS_PID
      ;;
  esac
}

vpmd_stats() { "$VPMD" stats --json --control "$W/vpmd/control.sock"; }
vpmd_ready() { bl_alive "$BACK_PID" && grep -q "vpmd ready" "$W/vpmd/vpmd.log"; }

backend_stop() {
  case $1 in
    testpmd) bl_tp_quit "$BACK_PID" "$BACK_FD" ;;
    vpmd) bl_stop_registered "$BACK_PID" 15 ;;
    ovs) bl_ovs_stop ;;
  esac
  bl_clean_dpdk
}

# cost_begin NAME / cost_end NAME: the backend's CPU cycles per frame on its
# polling core over the measured window; cost_end prints "value source".
cost_begin() {
  case $1 in
    testpmd) bl_tp_cmd "$BACK_FD" "$W/testpmd/testpmd.log" "clear fwd stats all" ;;
    vpmd)
      COST_S0=$(vpmd_stats) || COST_S0=""
      if ((PERF)); then
        perf stat -x, -e cycles -t "$(bl_busiest_thread "$BACK_PID")" -o "$W/perf.out" &
        PERF_PID=$!
      fi
      ;;
    ovs) bl_ovs_appctl dpif-netdev/pmd-stats-clear >/dev/null ;;
  esac
}

cost_end() {
  case $1 in
    testpmd)
      bl_tp_cmd "$BACK_FD" "$W/testpmd/testpmd.log" "show fwd stats all"
      tail -c "+$((CMD_OFF + 1))" "$W/testpmd/testpmd.log" |
        sed -n 's/.*CPU cycles\/packet=\([0-9.]*\).*/\1 testpmd-record-core-cycles/p' | head -n1
      ;;
    vpmd)
      local s1 frames
      # Memory while the frontend's guest memory is mapped, which it leaves out.
      bl_rss_kib_excluding_guest "$BACK_PID" >"$W/vpmd-rss"
      s1=$(vpmd_stats) || s1=""
      [[ -n $COST_S0 && -n $s1 ]] || { echo "null none"; return; }
      if ((PERF)) && [[ -n ${PERF_PID:-} ]]; then
        frames=$(jq -n --argjson a "$COST_S0" --argjson b "$s1" \
          '([$b.threads[].frames] | add) - ([$a.threads[].frames] | add)')
        kill -INT "$PERF_PID" 2>/dev/null; wait "$PERF_PID" 2>/dev/null
        awk -F, -v f="$frames" '$3 == "cycles" && f > 0 { printf "%.1f perf-stat\n", $1 / f; exit }' "$W/perf.out"
      else
        jq -rn --argjson a "$COST_S0" --argjson b "$s1" '
          def total($s; f): [$s.threads[] | f] | add;
          (total($b; .frames) - total($a; .frames)) as $f
          | (total($b; .busy_cycles) - total($a; .busy_cycles)) as $c
          | if $f > 0 then "\($c / $f * 10 | round / 10) vpmd-tsc-busy-cycles" else "null none" end'
      fi
      ;;
    ovs)
      bl_ovs_appctl dpif-netdev/pmd-stats-show >"$W/ovs/pmd-stats.txt" 2>&1
      sed -n 's/.*avg processing cycles per packet: *\([0-9.]*\).*/\1 ovs-pmd-stats-show/p' \
        "$W/ovs/pmd-stats.txt" | head -n1
      ;;
  esac
}

# ---------------------------------------------------------------- frontends

# What both vpmd-bench loop modes report, as jq fields of the measurement.
LOOP_FIELDS='mpps_ab: .directions[0].mpps, mpps_ba: .directions[1].mpps,
  gbps_ab: .directions[0].gbps, gbps_ba: .directions[1].gbps,
  seconds, front_cpu_share: .frontend.cpu_share,
  front_cycles_per_frame: .frontend.busy_cycles_per_frame'

# bench_loop BACKEND MODE SIZE JQ_FIELDS: vpmd-bench MODE (loopback or ring-loop)
# through BACKEND while its cost is sampled; sets res (JQ_FIELDS of the report,
# as a JSON object) and cost.
bench_loop() {
  local back=$1 mode=$2 size=$3 fields=$4 no_config=() huge=() key=$2
  [[ $back == vpmd ]] || no_config=(--no-config)
  ((BENCH_HUGE)) && huge=(--huge)
  [[ $mode == loopback ]] && key=vpmd-bench
  local cmd=("$VPMD_BENCH" "${no_config[@]}" "$mode" "$SOCK_A" "$SOCK_B" --size "$size"
    --duration "$DURATION" --warmup "$WARMUP" --core "$FRONT_CORE" "${huge[@]}" --json)
  bl_note "$key" "${cmd[*]}"
  "${cmd[@]}" >"$W/front.json" 2>"$W/front.err" &
  local fp=$!
  bl_register "$fp"
  sleep "$(awk -v w="$WARMUP" 'BEGIN { print w + 0.4 }')"
  cost_begin "$back"
  local rc=0
  wait "$fp" || rc=$?
  cost=$(cost_end "$back")
  if ((rc != 0)) || ! jq -e . "$W/front.json" >/dev/null 2>&1; then
    bl_log "vpmd-bench $mode failed ($rc): $(tail -n 3 "$W/front.err")"
    return 1
  fi
  res=$(jq -c "{$fields}" "$W/front.json")
}

# measure BACKEND FRONTEND SIZE ROUND: appends one JSON line to $MEAS.

measure() {
  local back=$1 front=$2 size=$3 round=$4 res cost
  case $front in
    ring-loop)
      bench_loop "$back" ring-loop "$size" "$LOOP_FIELDS,
        front_busy_share: .frontend.busy_share, front_stalled_share: .frontend.stalled_share,
        frames_per_burst: ((.directions[0].rx_per_burst + .directions[1].rx_per_burst) / 2),
        backend_drops, checks_bad: (.checks.rx_bad + .checks.tx_out_of_order),
        steal_s: .steal.seconds" || return 1
      ;;
    vpmd-bench)
      bench_loop "$back" loopback "$size" "$LOOP_FIELDS" || return 1
      ;;
    testpmd)
      local log=$W/front-testpmd.log
      local args=(-l "$FRONT_CORE,$BACK_CORE" --main-lcore "$BACK_CORE" --no-pci --single-file-segments
        "--file-prefix=$P_FRONT" --vdev "net_virtio_user0,path=$SOCK_A" --vdev "net_virtio_user1,path=$SOCK_B"
        -- -i --forward-mode=io --txpkts="$size" --total-num-mbufs=16384)
      bl_note testpmd-front "dpdk-testpmd ${args[*]}"
      bl_note testpmd-front "testpmd> set record-core-cycles on"
      bl_note testpmd-front "testpmd> start tx_first 32"
      bl_note testpmd-front "testpmd> clear fwd stats all; show port stats all (twice, $DURATION s apart); show fwd stats all"
      bl_tp_start front "$log" "${args[@]}" || return 1
      local fpid=$TP_PID ffd=$TP_FD
      sleep 1 # the backend brings the devices up
      bl_tp_cmd "$ffd" "$log" "set record-core-cycles on" || { bl_tp_quit "$fpid" "$ffd"; return 1; }
      # A backend that brought a port up late dropped its first frames: then nothing
      # circulates in that direction; stop and inject again (testpmd has no other way).
      local try
      for try in 1 2 3 4; do
        bl_tp_cmd "$ffd" "$log" "start tx_first 32" || { bl_tp_quit "$fpid" "$ffd"; return 1; }
        sleep "$WARMUP"
        tp_moving "$ffd" "$log" && break
        bl_log "  frames not circulating both ways through $back (try $try); injecting again"
        bl_tp_cmd "$ffd" "$log" stop
        ((try < 4)) || { bl_tp_quit "$fpid" "$ffd"; return 1; }
      done
      bl_tp_cmd "$ffd" "$log" "clear fwd stats all"
      cost_begin "$back"
      local t0 t1 o0 o1
      t0=$(date +%s.%N)
      bl_tp_cmd "$ffd" "$log" "show port stats all"
      o0=$CMD_OFF
      sleep "$DURATION"
      t1=$(date +%s.%N)
      bl_tp_cmd "$ffd" "$log" "show port stats all"
      o1=$CMD_OFF
      cost=$(cost_end "$back")
      bl_tp_cmd "$ffd" "$log" "show fwd stats all"
      local fcyc
      fcyc=$(tail -c "+$((CMD_OFF + 1))" "$log" | sed -n 's/.*CPU cycles\/packet=\([0-9.]*\).*/\1/p' | head -n1)
      [[ $fcyc =~ ^[0-9.]+$ ]] || fcyc=null
      bl_tp_cmd "$ffd" "$log" stop
      bl_tp_quit "$fpid" "$ffd"
      local p v o n=() k
      # n: RX-packets and RX-bytes of ports 0 and 1, at the start then at the end.
      for o in "$o0" "$o1"; do
        for p in 0 1; do
          for v in RX-packets RX-bytes; do
            k=$(bl_tp_port_stat "$log" "$o" $p $v)
            [[ $k =~ ^[0-9]+$ ]] || { bl_log "no $v for port $p in $log"; return 1; }
            n+=("$k")
          done
        done
      done
      res=$(jq -nc --argjson t "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
        --argjson rab "$((n[6] - n[2]))" --argjson bab "$((n[7] - n[3]))" \
        --argjson rba "$((n[4] - n[0]))" --argjson bba "$((n[5] - n[1]))" --argjson fc "$fcyc" \
        '{mpps_ab: ($rab / $t / 1e6), mpps_ba: ($rba / $t / 1e6),
          gbps_ab: ($bab * 8 / $t / 1e9), gbps_ba: ($bba * 8 / $t / 1e9), seconds: $t,
          front_cycles_per_frame: $fc}')
      ;;
  esac
  if jq -e '.mpps_ab <= 0 or .mpps_ba <= 0' <<<"$res" >/dev/null; then
    bl_log "  $back <- $front ${size}B: a direction carried nothing ($res)"
    return 1
  fi
  local rss=null
  [[ $back == vpmd && -s $W/vpmd-rss ]] && rss=$(cat "$W/vpmd-rss") && rm -f "$W/vpmd-rss"
  [[ $rss =~ ^[0-9]+$ ]] || rss=null
  local cval=${cost%% *} csrc=${cost#* }
  [[ $cval =~ ^[0-9.]+$ ]] || { cval=null; csrc=none; }
  jq -nc --arg b "$back" --arg f "$front" --argjson s "$size" --argjson r "$round" \
    --argjson res "$res" --argjson c "$cval" --arg cs "$csrc" --argjson rss "$rss" \
    --arg load "$(cut -d' ' -f1 /proc/loadavg)" \
    '{backend: $b, frontend: $f, size: $s, round: $r} + $res
     + {mpps: (($res.mpps_ab + $res.mpps_ba) / 2), gbps: (($res.gbps_ab + $res.gbps_ba) / 2),
        backend_cycles_per_frame: $c, cycles_source: $cs, loadavg1: ($load | tonumber)}
     + (if $rss == null then {} else {backend_rss_kib_excluding_guest: $rss} end)' >>"$MEAS"
  bl_log "  $back <- $front ${size}B round $round: $(tail -n1 "$MEAS" |
    jq -r '"\(.mpps_ab * 1000 | round / 1000) / \(.mpps_ba * 1000 | round / 1000) Mpps, \(.backend_cycles_per_frame) cyc/frame (\(.cycles_source))"')"
}

# tp_moving FD LOG: both ports of a testpmd frontend receive frames.
tp_moving() {
  local a b p x y
  bl_tp_cmd "$1" "$2" "show port stats all" || return 1
  a=$CMD_OFF
  sleep 0.3
  bl_tp_cmd "$1" "$2" "show port stats all" || return 1
  b=$CMD_OFF
  for p in 0 1; do
    x=$(bl_tp_port_stat "$2" "$a" $p RX-packets)
    y=$(bl_tp_port_stat "$2" "$b" $p RX-packets)
    [[ $x =~ ^[0-9]+$ && $y =~ ^[0-9]+$ ]] && ((y > x)) || return 1
  done
}

# run_backend_round NAME ROUND SIZES...: start NAME, measure every frontend at
# every size (frontend order alternating), stop it.
run_backend_round() {
  local back=$1 round=$2 size front fronts
  shift 2
  bl_log "round $round: backend $back"
  if ! backend_start "$back"; then
    bl_log "backend $back did not start; skipping it this round"
    backend_stop "$back"
    return 0
  fi
  for size in "$@"; do
    fronts=$FRONTENDS
    (((round + size / 64) % 2)) && fronts=$(echo "$FRONTENDS" | awk '{ for (i = NF; i > 0; i--) printf "%s ", $i }')
    for front in $fronts; do
      if ! measure "$back" "$front" "$size" "$round"; then
        bl_log "retrying $back <- $front ${size}B with a fresh backend"
        backend_stop "$back"
        if ! { backend_start "$back" && measure "$back" "$front" "$size" "$round"; }; then
          bl_log "giving up on $back <- $front ${size}B round $round"
        fi
      fi
    done
  done
  backend_stop "$back"
  bl_noted "$back" testpmd-front vpmd-bench ring-loop
}

# ---------------------------------------------------------------- rounds

read -ra BACK_LIST <<<"$BACKENDS"
rotate() { # rotate N: BACK_LIST rotated by N
  local count=${#BACK_LIST[@]} i
  for ((i = 0; i < count; i++)); do printf '%s ' "${BACK_LIST[(i + $1) % count]}"; done
}
for ((round = 1; round <= ROUNDS; round++)); do
  for back in $(rotate $((round - 1))); do
    # shellcheck disable=SC2086 # one argument per size
    run_backend_round "$back" "$round" $SIZES
  done
done
# Extra rounds for the sizes where some contender's results spread widely.
for ((round = ROUNDS + 1; round <= MAX_ROUNDS; round++)); do
  wide=$(jq -rs --argjson w "$SPREAD_WIDE" '
    group_by([.backend, .frontend, .size])[]
    | (map(.mpps) | sort) as $m | ($m[(($m | length) / 2 | floor)]) as $med
    | select($med > 0 and (($m[-1] - $m[0]) / $med) > $w) | .[0].size' "$MEAS" | sort -un | tr '\n' ' ')
  [[ -n ${wide// /} ]] || break
  bl_log "round $round for wide spreads at sizes: $wide"
  for back in $(rotate $((round - 1))); do
    # shellcheck disable=SC2086
    run_backend_round "$back" "$round" $wide
  done
done

# ---------------------------------------------------------------- report

LOAD_END=$(bl_load_snapshot)
mkdir -p "$OUT"
STAMP=$(date +%Y%m%d-%H%M%S)
NAME=compare-$STAMP
((QUICK)) && NAME=quick-latest
jq -n --argjson machine "$(bl_machine_json)" \
  --argjson load_start "$LOAD_START" --argjson load_end "$LOAD_END" \
  --arg date "$(date -Is)" --argjson quick "$QUICK" \
  --argjson cfg "$(jq -n --arg sizes "$SIZES" --argjson rounds "$ROUNDS" --argjson max "$MAX_ROUNDS" \
    --arg d "$DURATION" --arg w "$WARMUP" --arg b "$BACKENDS" --arg f "$FRONTENDS" --argjson huge "$BENCH_HUGE" \
    '{sizes: ($sizes | split(" ") | map(select(. != "") | tonumber)), rounds: $rounds, max_rounds: $max,
      duration_s: ($d | tonumber), warmup_s: ($w | tonumber), backends: ($b | split(" ")),
      frontends: ($f | split(" ")), vpmd_bench_hugepages: ($huge == 1)}')" \
  --argjson cmds "$(bl_cmds_json testpmd vpmd ovs testpmd-front vpmd-bench ring-loop)" \
  --argjson perf "$PERF" \
  --slurpfile m "$MEAS" \
  '{date: $date, quick: ($quick == 1), machine: $machine, load: {start: $load_start, end: $load_end},
    config: $cfg, perf_counters: ($perf == 1),
    vpmd_rss_kib_excluding_guest: ([$m[] | .backend_rss_kib_excluding_guest | select(. != null)] | max),
    commands: {backend_testpmd: $cmds.testpmd, backend_vpmd: $cmds.vpmd, backend_ovs: $cmds.ovs,
               frontend_testpmd: $cmds["testpmd-front"], frontend_vpmd_bench: $cmds["vpmd-bench"],
               frontend_ring_loop: $cmds["ring-loop"]},
    reference_mpps: {testpmd: {"64": 7.71, "256": 6.13, "1024": 2.62, "1518": 4.51},
                     ovs: {"64": 8.13, "256": 5.16, "1024": 3.00, "1518": 3.72}},
    measurements: $m}' >"$W/raw.json"
cp "$W/raw.json" "$OUT/$NAME.json" # kept even if the report cannot be made
"$REPO/scripts/bench-report.sh" "$W/raw.json" "$OUT/$NAME"
((QUICK)) || { cp "$OUT/$NAME.md" "$OUT/latest.md"; cp "$OUT/$NAME.json" "$OUT/latest.json"; }
cat "$OUT/$NAME.md"
bl_log "results: $OUT/$NAME.md and $OUT/$NAME.json"
