#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Macvlan benchmark: frames between a kernel interface (the uplink, one end of a
# veth pair) and VM ports, vpmd's macvlan mode against DPDK testpmd forwarding
# between net_af_xdp and net_vhost, side by side in one run.
#
#   in   a generator (vpmd-bench xdp-txonly: AF_XDP, copy mode) in a namespace
#        sends on the namespace's end of the veth at full speed, in turn to the
#        VM ports' MACs (weight 7 each) and to two unknown MACs (weight 1 each),
#        which must go to the host's stack, not to a VM; vpmd-bench rxonly
#        receives on each VM port and checks its own stream (--dst-mac).
#   out  vpmd-bench txonly on VM port vm0 at full speed to the namespace's MAC;
#        what arrives is the namespace end's rx_packets.
#
#   contenders  vpmd-busy   vpmd run, [[macvlan]] on the uplink, N VM ports,
#                           [pmd] cores = [1], max_sleep_us = 0
#               vpmd-sleep  the same with max_sleep_us = --sleep-us (50)
#               dpdk        dpdk-testpmd -l 0,1 --main-lcore 0 --vdev net_af_xdp0
#                           (the uplink, queue 0) --vdev net_vhost0, io forwarding;
#                           its XDP program takes every frame, so the unknown-MAC
#                           frames reach its VM too (reported, not a failure)
#
# The generator (and txonly) run on core 0, the polling thread alone on core 1.
# The receivers wait on their call eventfd (no spinning), on core 0 with the
# generator, at real-time priority (--rx-core, --rx-prio): a woken receiver runs
# at once, as a VM's vCPU on a core of its own would (one that waited for a busy
# thread's time slice would lose frames no switch could save), and the polling
# thread's CPU time is its own: receivers beside it (--rx-core 1) would take the
# core from a busy poller, whose CPU time per frame would then say how much the
# receivers left it rather than what it costs. They take their CPU time from the
# generator instead, which then offers fewer frames, to every contender alike.
# Per measurement: Mpps offered and delivered, frames lost, unknown-MAC frames
# at the VMs and at the host (the uplink's rx "otherhost" drops: frames the
# host's IP stack saw for another MAC), and the polling thread's CPU time per
# frame delivered (utime + stime of that thread in /proc/PID/task/TID/stat over
# the measured interval; vpmd: pmd-core1, testpmd: its forwarding lcore). Median
# of the rounds; contenders alternate round by round. Results: bench/results/
# macvlan-latest.{md,json} and a timestamped copy (--quick: macvlan-quick.*).
#
# Cleans up on exit or interrupt: every process it started, the namespace and
# the veth pair (and with them any XDP program), DPDK hugepage files.
#
# Usage: scripts/bench-macvlan.sh [options]     (as root)
#   --quick              1 round, 64 B, 3 s per measurement (smoke test)
#   --rounds N           rounds (default 3)
#   --sizes "64 1518"    frame sizes (default "64 1518")
#   --duration S         seconds the generator sends per measurement (default 5)
#   --contenders "..."   subset of "vpmd-busy vpmd-sleep dpdk"
#   --directions "..."   subset of "in out"
#   --vms N              VM ports of vpmd (1 or 2, default 2); DPDK has one
#   --sleep-us N         max_sleep_us of vpmd-sleep (default 50)
#   --rx-core N          pin the receivers to core N (default 0, with the
#                        generator; 1: beside the polling thread; "none": let
#                        the scheduler place them)
#   --rx-queue-size N    receivers' virtqueue size (default 1024)
#   --no-huge            the receivers' and txonly's guest memory on 4 KiB pages
#                        (default: 2 MiB hugepages, as vhost-user VMs usually have)
#   --rx-prio P          fifo (default): the receivers run SCHED_FIFO priority 1,
#                        so a woken receiver runs at once, as a VM's vCPU on a
#                        core of its own would, instead of waiting out the busy
#                        polling thread's time slice; normal: no change
#   --wait-load X        first wait (up to 30 min) for a 1-minute load below X
#   --out DIR            where results go (default bench/results)
#   --no-build           use target/release binaries as they are
#   --keep-work          keep the work dir (logs, configs, raw reports)
# Environment: VPMD, VPMD_BENCH (binaries).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BL_NAME=bench-macvlan
# shellcheck source=scripts/bench-lib.sh
source "$REPO/scripts/bench-lib.sh"

ROUNDS=3 SIZES="64 1518" DURATION=5 CONTENDERS="vpmd-busy vpmd-sleep dpdk" DIRECTIONS="in out"
VMS=2 SLEEP_US=50 RX_CORE=0 RX_QSIZE=1024 RX_PRIO=fifo HUGE=1 WAIT_LOAD="" OUT=$REPO/bench/results BUILD=1 QUICK=0
while (($#)); do
  case $1 in
    --quick) QUICK=1 ROUNDS=1 SIZES=64 DURATION=3 ;;
    --rounds) ROUNDS=$2; shift ;;
    --sizes) SIZES=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --contenders) CONTENDERS=$2; shift ;;
    --directions) DIRECTIONS=$2; shift ;;
    --vms) VMS=$2; shift ;;
    --sleep-us) SLEEP_US=$2; shift ;;
    --rx-core) RX_CORE=$2; shift ;;
    --rx-queue-size) RX_QSIZE=$2; shift ;;
    --rx-prio) RX_PRIO=$2; shift ;;
    --no-huge) HUGE=0 ;;
    --wait-load) WAIT_LOAD=$2; shift ;;
    --out) OUT=$2; shift ;;
    --no-build) BUILD=0 ;;
    --keep-work) export KEEP_WORK=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) bl_die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
[[ $VMS == 1 || $VMS == 2 ]] || bl_die "--vms must be 1 or 2"
[[ $RX_PRIO == fifo || $RX_PRIO == normal ]] || bl_die "--rx-prio must be fifo or normal"

bl_binaries
GEN_CORE=0 PMD_CORE=1 P_DPDK=vbmv
NS=vpmd-bmv-$$ UP=vbmv$$ NSIF=out0
NS_MAC=02:00:00:00:31:fe
VM_MACS=(52:54:00:00:31:01 52:54:00:00:31:02)
UNKNOWN_MACS=(02:00:00:ff:31:01 02:00:00:ff:31:02)
DSTS=""
for ((i = 0; i < VMS; i++)); do DSTS+="${VM_MACS[i]}*7,"; done
DSTS+="${UNKNOWN_MACS[0]},${UNKNOWN_MACS[1]}"
TCK=$(getconf CLK_TCK)

[[ $(id -u) -eq 0 ]] || bl_die "must run as root (namespaces, XDP, hugepages)"
bl_work_dir bench-macvlan
BL_PREFIXES=("$P_DPDK")
net_cleanup() {
  ip netns del "$NS" 2>/dev/null
  ip link del "$UP" 2>/dev/null
  return 0
}
BL_CLEANUP_HOOKS=(net_cleanup)
bl_install_traps

# ---------------------------------------------------------------- setup

bl_install dpdk jq psmisc iproute2
bl_build
if [[ $CONTENDERS == *dpdk* ]] || ((HUGE)); then
  "$REPO/scripts/hugepages.sh" 1024 "$P_DPDK" >/dev/null || bl_die "hugepages setup failed"
  bl_clean_dpdk
fi
HUGE_ARG=()
((HUGE)) && HUGE_ARG=(--huge)

if [[ -n $WAIT_LOAD ]]; then
  for ((t = 0; t < 180; t++)); do
    awk -v max="$WAIT_LOAD" '{ exit !($1 < max) }' /proc/loadavg && break
    ((t % 6 == 0)) && bl_log "waiting for the 1-minute load to drop below $WAIT_LOAD: $(cut -d' ' -f1-3 /proc/loadavg)"
    sleep 10
  done
fi

# The namespace is the outside world; UP is the uplink (vpmd's or DPDK's).
# One RX/TX queue per end (every frame on AF_XDP queue 0), MTU 1504 for
# 1518-byte frames, no IPv6 (its multicast chatter would reach the VMs).
ip netns add "$NS"
ip link add "$UP" numrxqueues 1 numtxqueues 1 type veth \
  peer name "$NSIF" netns "$NS" numrxqueues 1 numtxqueues 1
echo 1 >"/proc/sys/net/ipv6/conf/$UP/disable_ipv6"
ip netns exec "$NS" sh -c 'echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6;
  echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6'
ip link set "$UP" mtu 1504 up
ip -n "$NS" link set lo up
ip -n "$NS" link set "$NSIF" mtu 1504 address "$NS_MAC" up

MEAS=$W/measurements.jsonl
: >"$MEAS"
LOAD_START=$(bl_load_snapshot)

# link_stats NS IF: rtnetlink stats64 of IF (NS "" = ours) as JSON.
link_stats() {
  if [[ -n $1 ]]; then ip -n "$1" -s -s -j link show dev "$2"; else ip -s -s -j link show dev "$2"; fi |
    jq -c '.[0].stats64'
}

# thread_cpu PID TID: "utime stime" in clock ticks and the run time in ns.
thread_cpu() {
  local st
  st=$(sed 's/.*) //' "/proc/$1/task/$2/stat") || return 1
  echo "$(awk '{ print $12, $13 }' <<<"$st") $(awk '{ print $1 }' "/proc/$1/task/$2/schedstat")"
}

# steal_ticks: "core0 core1" time the hypervisor ran something else on our
# vCPUs (/proc/stat steal, clock ticks); a polling thread that does not run for
# milliseconds lets the AF_XDP ring overflow whatever it does.
steal_ticks() { awk '$1 == "cpu0" { a = $9 } $1 == "cpu1" { b = $9 } END { print a + 0, b + 0 }' /proc/stat; }

# timed_run OUT ERR CMD...: run CMD (stdout to OUT, stderr to ERR) and wait for
# it, reading the polling thread's CPU time, the steal time and the clock before
# and after: sets the caller's cpu0 cpu1, st0 st1, t0 t1, load1 (1-minute load
# average at the end) and rc (CMD's exit status).
timed_run() {
  local out=$1 err=$2 p
  shift 2
  cpu0=$(thread_cpu "$BACK_PID" "$PMD_TID")
  st0=$(steal_ticks)
  t0=$(date +%s.%N)
  "$@" >"$out" 2>"$err" &
  p=$!
  bl_register "$p"
  rc=0
  wait "$p" || rc=$?
  cpu1=$(thread_cpu "$BACK_PID" "$PMD_TID")
  st1=$(steal_ticks)
  t1=$(date +%s.%N)
  load1=$(cut -d' ' -f1 /proc/loadavg)
}

# find_thread PID COMM_REGEX: the thread of PID whose name matches.
find_thread() {
  local t
  for t in /proc/"$1"/task/*; do
    grep -qE "$2" "$t/comm" 2>/dev/null && { echo "${t##*/}"; return 0; }
  done
  return 1
}

# ---------------------------------------------------------------- backends
# backend_start CONTENDER DIR: sets BACK_PID, PMD_TID and SOCKS (the VM sockets).

backend_start() {
  local c=$1 d=$2 i ports=""
  mkdir -p "$d"
  case $c in
    vpmd-busy | vpmd-sleep)
      local sleep_us=0
      [[ $c == vpmd-sleep ]] && sleep_us=$SLEEP_US
      SOCKS=()
      printf '[pmd]\ncores = [%d]\ncontrol_socket = "%s"\nmax_sleep_us = %d\n' \
        "$PMD_CORE" "$d/control.sock" "$sleep_us" >"$d/vpmd.toml"
      for ((i = 0; i < VMS; i++)); do
        SOCKS+=("$d/vm$i.sock")
        printf '\n[[port]]\nname = "vm%d"\nsocket = "%s"\nmac = "%s"\n' \
          "$i" "$d/vm$i.sock" "${VM_MACS[i]}" >>"$d/vpmd.toml"
        ports+="${ports:+, }\"vm$i\""
      done
      printf '\n[[macvlan]]\nuplink = "%s"\nqueues = 1\nmode = "bridge"\nports = [%s]\n' \
        "$UP" "$ports" >>"$d/vpmd.toml"
      bl_note "$c" "$VPMD run --config vpmd.toml   # vpmd.toml:"
      bl_note "$c" "$(sed 's/^/    /' "$d/vpmd.toml")"
      bl_noted "$c"
      RUST_LOG=warn,vpmd=info "$VPMD" run --config "$d/vpmd.toml" >"$d/vpmd.out" 2>"$d/vpmd.log" &
      BACK_PID=$!
      bl_register "$BACK_PID"
      bl_wait_for 30 "vpmd ready" vpmd_ready "$d" || return 1
      PMD_TID=$(find_thread "$BACK_PID" "^pmd-core$PMD_CORE\$") || return 1
      ;;
    dpdk)
      SOCKS=("$d/vhost0.sock")
      rm -f "${SOCKS[0]}"
      local args=(-l "$GEN_CORE,$PMD_CORE" --main-lcore "$GEN_CORE" --no-pci --single-file-segments
        --file-prefix=$P_DPDK --vdev "net_af_xdp0,iface=$UP,start_queue=0,queue_count=1"
        --vdev "net_vhost0,iface=${SOCKS[0]}" -- -i --forward-mode=io --total-num-mbufs=32768)
      bl_note dpdk "dpdk-testpmd ${args[*]}"
      bl_note dpdk "testpmd> start"
      bl_noted dpdk
      bl_tp_start dpdk "$d/testpmd.log" "${args[@]}" || return 1
      BACK_PID=$TP_PID BACK_FD=$TP_FD
      PMD_TID=$(find_thread "$BACK_PID" "lcore-worker-$PMD_CORE|rte-worker-$PMD_CORE") ||
        { bl_log "no forwarding lcore thread in testpmd"; return 1; }
      ;;
  esac
}

vpmd_ready() { bl_alive "$BACK_PID" && grep -q "vpmd ready" "$1/vpmd.log"; }
vpmd_stats() { "$VPMD" stats --json --control "$1/control.sock"; }
vm_ports_up() {
  local n
  n=$(vpmd_stats "$1" 2>/dev/null | jq '[.ports[] | select(.kind != "uplink" and .state == "up")] | length') &&
    ((n == VMS))
}

backend_stop() {
  case $1 in
    dpdk)
      bl_tp_quit "$BACK_PID" "$BACK_FD"
      # testpmd attached its XDP program over netlink: gone with a clean exit,
      # left behind by a killed one (vpmd would then refuse the interface).
      ip link set dev "$UP" xdp off 2>/dev/null || true
      ;;
    *) bl_stop_registered "$BACK_PID" 15 ;;
  esac
  bl_clean_dpdk
}

# ---------------------------------------------------------------- one measurement

# steal_json BEFORE AFTER: steal ticks per core over the interval.
steal_json() {
  local a0 b0 a1 b1
  read -r a0 b0 <<<"$1"
  read -r a1 b1 <<<"$2"
  echo "{\"core0\": $((a1 - a0)), \"core1\": $((b1 - b0))}"
}

# cpu_json T0 T1 FRAMES WALL_S: the polling thread's CPU over [T0, T1] per frame.
cpu_json() {
  local u0 s0 r0 u1 s1 r1
  read -r u0 s0 r0 <<<"$1"
  read -r u1 s1 r1 <<<"$2"
  jq -nc --argjson u "$(((u1 - u0)))" --argjson s "$(((s1 - s0)))" --argjson r "$(((r1 - r0)))" \
    --argjson tck "$TCK" --argjson f "$3" --argjson wall "$4" '
    ($u / $tck) as $us | ($s / $tck) as $ss |
    {user_s: $us, system_s: $ss, cpu_s: ($us + $ss), runtime_s: ($r / 1e9), wall_s: $wall,
     share: (if $wall > 0 then ($us + $ss) / $wall else null end),
     user_pct: (if $us + $ss > 0 then 100 * $us / ($us + $ss) else null end),
     ns_per_frame: (if $f > 0 then ($us + $ss) * 1e9 / $f else null end)}'
}

# measure_in CONTENDER SIZE ROUND: generator -> uplink -> VM ports.
measure_in() {
  local c=$1 size=$2 round=$3 d=$4 i pids=() no_config=() rxcore=() prio=()
  [[ $c == dpdk ]] && no_config=(--no-config)
  [[ $RX_CORE != none ]] && rxcore=(--core "$RX_CORE")
  [[ $RX_PRIO == fifo ]] && prio=(chrt -f 1)
  backend_start "$c" "$d" || return 1
  [[ $c == dpdk ]] && { bl_tp_cmd "$BACK_FD" "$d/testpmd.log" start || return 1; }
  for i in "${!SOCKS[@]}"; do
    local cmd=("${prio[@]}" "$VPMD_BENCH" "${no_config[@]}" rxonly "${SOCKS[i]}" --dst-mac "${VM_MACS[i]}"
      --queue-size "$RX_QSIZE" "${HUGE_ARG[@]}" --idle-timeout 2 --json "${rxcore[@]}")
    bl_note "rx-$c" "${cmd[*]} &"
    "${cmd[@]}" >"$d/rx$i.json" 2>"$d/rx$i.err" &
    pids+=($!)
    bl_register $!
  done
  bl_noted "rx-$c"
  for i in "${!SOCKS[@]}"; do
    bl_wait_for 30 "receiver $i" grep -q "rxonly ready" "$d/rx$i.err" || return 1
  done
  if [[ $c == dpdk ]]; then
    bl_wait_for 10 "testpmd vhost0 ready" grep -q "virtio is now ready" "$d/testpmd.log" || true
  else
    bl_wait_for 10 "VM ports up" vm_ports_up "$d" || return 1
  fi
  sleep 0.3
  local up0 s0="{}" cpu0 cpu1 t0 t1 st0 st1 rc=0
  up0=$(link_stats "" "$UP")
  [[ $c == dpdk ]] || s0=$(vpmd_stats "$d")
  local gen=(ip netns exec "$NS" "$VPMD_BENCH" xdp-txonly --iface "$NSIF" --src-mac "$NS_MAC"
    --dst-mac "$DSTS" --size "$size" --duration "$DURATION" --core "$GEN_CORE" --json)
  bl_note gen "${gen[*]}"
  bl_noted gen
  local load1
  timed_run "$d/gen.json" "$d/gen.err" "${gen[@]}"
  ((rc == 0)) || { bl_log "generator failed ($rc): $(tail -n 3 "$d/gen.err")"; return 1; }
  # The receivers stop 2 s after their last frame; SIGINT (they still report) if not.
  for i in "${!pids[@]}"; do
    local k=0
    while bl_alive "${pids[i]}" && ((k++ < 150)); do sleep 0.1; done
    bl_stop "${pids[i]}" 5
    jq -e . "$d/rx$i.json" >/dev/null 2>&1 || { bl_log "receiver $i: no report: $(tail -n 3 "$d/rx$i.err")"; return 1; }
  done
  local up1 s1="{}"
  up1=$(link_stats "" "$UP")
  [[ $c == dpdk ]] || s1=$(vpmd_stats "$d")
  backend_stop "$c"
  local rx
  rx=$(jq -s -c . "$d"/rx[0-9].json)
  local delivered
  delivered=$(jq '[.[] | .frames + .other_dst] | add' <<<"$rx")
  jq -nc --arg c "$c" --argjson size "$size" --argjson round "$round" --argjson gen "$(cat "$d/gen.json")" \
    --argjson rx "$rx" --argjson up0 "$up0" --argjson up1 "$up1" --argjson s0 "$s0" --argjson s1 "$s1" \
    --argjson cpu "$(cpu_json "$cpu0" "$cpu1" "$delivered" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")" \
    --argjson vms "$(printf '%s\n' "${VM_MACS[@]:0:VMS}" | jq -R . | jq -sc .)" \
    --argjson unk "$(printf '%s\n' "${UNKNOWN_MACS[@]}" | jq -R . | jq -sc .)" \
    --argjson load "$load1" --argjson steal "$(steal_json "$st0" "$st1")" '
    ($gen.destinations | map({(.mac): .frames}) | add) as $sent
    | ([$vms[] | $sent[.] // 0] | add) as $vm_sent
    | ([$unk[] | $sent[.] // 0] | add) as $unk_sent
    | ([$rx[] | .other_dst_by_mac[] | select(.mac as $m | $unk | index($m)) | .frames] | add // 0) as $unk_vm
    | ([$rx[] | .frames + .other_dst] | add) as $delivered
    | ([$rx[] | .frames] | add) as $own
    | ([$rx[] | .other_dst_by_mac[] | select(.mac as $m | $vms | index($m)) | .frames] | add // 0) as $cross
    | def d(f): ($s1 | [.ports[]? | select(.kind == "uplink") | f] | add // 0)
                 - ($s0 | [.ports[]? | select(.kind == "uplink") | f] | add // 0);
    {contender: $c, direction: "in", size: $size, round: $round, loadavg1: $load,
     seconds: $gen.seconds, offered_frames: $gen.frames, offered_mpps: $gen.mpps,
     vm_frames_offered: $vm_sent, unknown_frames_offered: $unk_sent,
     delivered_frames: $delivered, delivered_mpps: ($delivered / $gen.seconds / 1e6),
     vm_frames_delivered: ($own + $cross), lost: ($vm_sent - $own - $cross),
     unknown_at_vms: $unk_vm, unknown_to_host: (($up1.rx.otherhost // 0) - ($up0.rx.otherhost // 0)),
     uplink_rx_dropped: (($up1.rx.dropped // 0) - ($up0.rx.dropped // 0)),
     checks: {corrupted: ([$rx[].corrupted] | add), reordered: ([$rx[].reordered] | add),
              duplicates: ([$rx[].duplicates] | add), foreign: ([$rx[].foreign] | add),
              other_vm_frames: $cross},
     vpmd: (if $c == "dpdk" then null else
       {uplink_in: d(.tx_packets), uplink_forwarded: d(.forwarded), uplink_drops: d([.drops[]] | add),
        accounting_exact: ([$s1.ports[] | .tx_packets == .forwarded + ([.drops[]] | add)] | all),
        vm_rx: ([$s1.ports[] | select(.kind != "uplink") | {(.name): .rx_packets}] | add),
        drops: ($s1.ports[] | select(.kind == "uplink") | .drops | with_entries(select(.value > 0)))} end),
     generator: {mpps: $gen.mpps, cpu_share: $gen.cpu.share, ns_per_frame: $gen.cpu.ns_per_frame,
                 user_s: $gen.cpu.user_s, system_s: $gen.cpu.system_s, bind_mode: $gen.bind_mode},
     pmd: $cpu, steal_ticks: $steal}' >>"$MEAS"
  report_line
}

# measure_out CONTENDER SIZE ROUND: txonly on vm0 -> uplink -> namespace.
measure_out() {
  local c=$1 size=$2 round=$3 d=$4 no_config=()
  [[ $c == dpdk ]] && no_config=(--no-config)
  backend_start "$c" "$d" || return 1
  [[ $c == dpdk ]] && { bl_tp_cmd "$BACK_FD" "$d/testpmd.log" start || return 1; }
  local ns0 s0="{}" cpu0 cpu1 t0 t1 st0 st1 rc=0
  ns0=$(link_stats "$NS" "$NSIF")
  [[ $c == dpdk ]] || s0=$(vpmd_stats "$d")
  local cmd=("$VPMD_BENCH" "${no_config[@]}" txonly "${SOCKS[0]}" --src-mac "${VM_MACS[0]}"
    --dst-mac "$NS_MAC" --size "$size" --duration "$DURATION" --queue-size "$RX_QSIZE" "${HUGE_ARG[@]}"
    --core "$GEN_CORE" --json)
  bl_note "tx-$c" "${cmd[*]}"
  bl_noted "tx-$c"
  local load1
  timed_run "$d/tx.json" "$d/tx.err" "${cmd[@]}"
  ((rc == 0)) || { bl_log "txonly failed ($rc): $(tail -n 3 "$d/tx.err")"; return 1; }
  sleep 0.3
  local ns1 s1="{}"
  ns1=$(link_stats "$NS" "$NSIF")
  [[ $c == dpdk ]] || s1=$(vpmd_stats "$d")
  backend_stop "$c"
  local delivered
  delivered=$(jq -n --argjson a "$ns0" --argjson b "$ns1" '$b.rx.packets - $a.rx.packets')
  jq -nc --arg c "$c" --argjson size "$size" --argjson round "$round" --argjson tx "$(cat "$d/tx.json")" \
    --argjson ns0 "$ns0" --argjson ns1 "$ns1" --argjson s0 "$s0" --argjson s1 "$s1" \
    --argjson cpu "$(cpu_json "$cpu0" "$cpu1" "$delivered" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")" \
    --argjson delivered "$delivered" --argjson load "$load1" --argjson steal "$(steal_json "$st0" "$st1")" '
    def d(f): ($s1 | [.ports[]? | select(.kind == "uplink") | f] | add // 0)
              - ($s0 | [.ports[]? | select(.kind == "uplink") | f] | add // 0);
    {contender: $c, direction: "out", size: $size, round: $round, loadavg1: $load,
     seconds: $tx.seconds, offered_frames: $tx.frames, offered_mpps: $tx.mpps,
     delivered_frames: $delivered, delivered_mpps: ($delivered / $tx.seconds / 1e6),
     lost: ($tx.frames - $delivered), in_flight_at_end: $tx.in_flight,
     ns_rx_dropped: (($ns1.rx.dropped // 0) - ($ns0.rx.dropped // 0)),
     vpmd: (if $c == "dpdk" then null else
       {uplink_out: d(.rx_packets),
        accounting_exact: ([$s1.ports[] | .tx_packets == .forwarded + ([.drops[]] | add)] | all),
        vm0_drops: ($s1.ports[] | select(.name == "vm0") | .drops | with_entries(select(.value > 0)))} end),
     generator: {mpps: $tx.mpps},
     pmd: $cpu, steal_ticks: $steal}' >>"$MEAS"
  report_line
}

report_line() {
  bl_log "  $(tail -n1 "$MEAS" | jq -r '"\(.contender) \(.direction) \(.size)B round \(.round): offered \(.offered_mpps * 1000 | round / 1000) Mpps, delivered \(.delivered_mpps * 1000 | round / 1000) Mpps, lost \(.lost)\(if .direction == "in" then ", unknown at VMs \(.unknown_at_vms), to host \(.unknown_to_host)" else "" end), pmd \(.pmd.ns_per_frame // 0 | round) ns/frame (\((.pmd.share // 0) * 100 | round) % of a core, user \(.pmd.user_pct // 0 | round) %), load \(.loadavg1)"')"
}

# measure CONTENDER DIRECTION SIZE ROUND, retried once; each try in a directory
# of its own (configs, logs, reports).
MEAS_N=0
measure() {
  local try
  for try in 1 2; do
    MEAS_N=$((MEAS_N + 1))
    if "measure_$2" "$1" "$3" "$4" "$(printf '%s/%02d-%s-%s-%s-r%s' "$W" "$MEAS_N" "$1" "$2" "$3" "$4")"; then
      return 0
    fi
    bl_log "$1 $2 ${3}B round $4 failed (try $try)"
    backend_stop "$1" 2>/dev/null || true
  done
  return 0
}

# ---------------------------------------------------------------- rounds

read -ra C_LIST <<<"$CONTENDERS"
for ((round = 1; round <= ROUNDS; round++)); do
  n=${#C_LIST[@]}
  for size in $SIZES; do
    for ((k = 0; k < n; k++)); do
      c=${C_LIST[(k + round - 1) % n]}
      for dir in $DIRECTIONS; do
        bl_log "round $round: $c $dir ${size}B"
        measure "$c" "$dir" "$size" "$round"
      done
    done
  done
done

# ---------------------------------------------------------------- report

LOAD_END=$(bl_load_snapshot)
mkdir -p "$OUT"
NAME=macvlan-$(date +%Y%m%d-%H%M%S)
((QUICK)) && NAME=macvlan-quick
cmds=$(bl_cmds_json vpmd-busy vpmd-sleep dpdk gen rx-vpmd-busy rx-dpdk tx-vpmd-busy tx-dpdk)
jq -n --argjson machine "$(bl_machine_json)" \
  --argjson load_start "$LOAD_START" --argjson load_end "$LOAD_END" \
  --arg date "$(date -Is)" --argjson quick "$QUICK" --argjson cmds "$cmds" \
  --argjson cfg "$(jq -n --arg sizes "$SIZES" --argjson rounds "$ROUNDS" --arg d "$DURATION" \
    --arg c "$CONTENDERS" --arg dirs "$DIRECTIONS" --argjson vms "$VMS" --argjson sleep "$SLEEP_US" \
    --arg rxcore "$RX_CORE" --argjson qs "$RX_QSIZE" --arg prio "$RX_PRIO" --argjson huge "$HUGE" --arg dsts "$DSTS" \
    '{sizes: ($sizes | split(" ") | map(select(. != "") | tonumber)), rounds: $rounds,
      duration_s: ($d | tonumber), contenders: ($c | split(" ")), directions: ($dirs | split(" ")),
      vm_ports: $vms, max_sleep_us: $sleep, rx_core: $rxcore, rx_queue_size: $qs, rx_priority: $prio, guest_hugepages: ($huge == 1),
      generator_destinations: $dsts, generator_core: 0, polling_core: 1}')" \
  --slurpfile m "$MEAS" \
  '{date: $date, quick: ($quick == 1), machine: $machine, load: {start: $load_start, end: $load_end},
    config: $cfg, commands: $cmds,
    reference: {dpdk_generator_mpps: {"64": 0.79, "1518": 0.68}, dpdk_fwd_user_pct: 45,
                target_cpu_ratio: 0.7},
    measurements: $m}' >"$W/raw.json"
cp "$W/raw.json" "$OUT/$NAME.json"
"$REPO/scripts/bench-macvlan-report.sh" "$W/raw.json" "$OUT/$NAME"
((QUICK)) || { cp "$OUT/$NAME.md" "$OUT/macvlan-latest.md"; cp "$OUT/$NAME.json" "$OUT/macvlan-latest.json"; }
cat "$OUT/$NAME.md"
bl_log "results: $OUT/$NAME.md and $OUT/$NAME.json"
