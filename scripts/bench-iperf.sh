#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Guest-to-guest TCP throughput (iperf3) through vhost-user switches on this
# machine, side by side: the same two guests (QEMU TCG, -smp 1, virtio-net with
# vectors=0, booted afresh for each measurement) on two ports of one switch,
# guest a sending to guest b for --time seconds. The switch polls on core 1
# where it lets itself be pinned. Under TCG the guests' CPUs are the limit, so
# what the switch lets them offload (checksums, TSO) shows up directly.
#
#   contenders  vpmd-on        vpmd, one veth pair, default config (every offload on)
#               vpmd-off       the same with `offload = { csum = false, guest_csum = false }`
#                              on both ports (a vpmd without offloads refuses the key:
#                              then this contender is skipped and the table says so)
#               testpmd-tso0   dpdk-testpmd, two net_vhost ports (tso=0), io forwarding
#               testpmd-tso1   the same with net_vhost ...,tso=1
#               ovs            Open vSwitch with DPDK, userspace-tso-enable=true, two
#                              dpdkvhostuserclient ports (the guests' QEMUs listen; OVS 3.1
#                              offers TSO only on those), flows in_port=1 -> 2 and back
#
# Rounds alternate the contenders (the order rotates every round); the table
# gives per contender the median, minimum and maximum Gbit/s (receiver side),
# the median TCP retransmits, the ratios vpmd-on/vpmd-off and
# vpmd-on/max(testpmd-tso1, ovs), the machine and the exact commands. Results:
# bench/results/iperf-YYYYMMDD-HHMMSS.md and .json, copied to iperf-latest.md
# (--quick: iperf-quick-latest.md/.json only).
#
# Installs qemu-system-x86, iperf3, dpdk and openvswitch-switch-dpdk when
# missing, reserves hugepages (scripts/hugepages.sh), and on exit or interrupt
# stops every process it started and removes its hugepage files, OVS database
# and sockets. Run it under `nice -n 10` on a shared machine (everything it
# starts inherits that).
#
# Usage: scripts/bench-iperf.sh [options]     (as root)
#   --quick               1 round, 5 s per transfer (every contender runs once)
#   --rounds N            rounds for every contender (default 3)
#   --time S              seconds per iperf3 transfer (default 10)
#   --contenders "..."    subset of "vpmd-on vpmd-off testpmd-tso0 testpmd-tso1 ovs"
#   --out DIR             where results go (default bench/results)
#   --no-build            use target/release binaries as they are
#   --keep-work           keep the work dir (logs, configs, guest consoles)
# Environment: VPMD (binary), GUEST_DIR (guest kernel/initramfs, default target/guest).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BL_NAME=bench-iperf
# shellcheck source=scripts/bench-lib.sh
source "$REPO/scripts/bench-lib.sh"
# shellcheck source=scripts/vpmd-config.sh
source "$REPO/scripts/vpmd-config.sh"

# The command as run, with the binary and the niceness it was given.
CMDLINE=$0
if (($#)); then CMDLINE+=$(printf ' %q' "$@"); fi
(($(nice) == 0)) || CMDLINE="nice -n $(nice) $CMDLINE"
CMDLINE="${VPMD:+VPMD=$VPMD }$CMDLINE"
ROUNDS=3 TIME=10 CONTENDERS="vpmd-on vpmd-off testpmd-tso0 testpmd-tso1 ovs"
OUT=$REPO/bench/results BUILD=1 QUICK=0
while (($#)); do
  case $1 in
    --quick) QUICK=1 ROUNDS=1 TIME=5 ;;
    --rounds) ROUNDS=$2; shift ;;
    --time) TIME=$2; shift ;;
    --contenders) CONTENDERS=$2; shift ;;
    *) bl_common_option "$@"; shift $((BL_OPT_ARGS - 1)) ;;
  esac
  shift
done
for c in $CONTENDERS; do
  [[ " vpmd-on vpmd-off testpmd-tso0 testpmd-tso1 ovs " == *" $c "* ]] || bl_die "unknown contender '$c'"
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ && $TIME =~ ^[1-9][0-9]*$ ]] || bl_die "--rounds and --time take positive integers"

bl_binaries
GUEST_DIR=${GUEST_DIR:-$REPO/target/guest}
BACK_CORE=1
P_BACK=vbiback P_OVS=vbiovs
OFFLOAD_OFF="csum = false, guest_csum = false"
MAC_A=52:54:00:00:00:01 MAC_B=52:54:00:00:00:02

[[ $(id -u) -eq 0 ]] || bl_die "must run as root (hugepages, apt-get)"
bl_work_dir bench-iperf
BL_PREFIXES=("$P_BACK" "$P_OVS")
bl_install_traps

# ---------------------------------------------------------------- setup

bl_install qemu-system-x86 iperf3 ethtool dpdk openvswitch-switch-dpdk jq psmisc cpio
[[ -x $BL_OVS_VSWITCHD ]] || bl_die "$BL_OVS_VSWITCHD missing after installing openvswitch-switch-dpdk"
bl_build
"$REPO/scripts/hugepages.sh" 1024 "${BL_PREFIXES[@]}" >/dev/null || bl_die "hugepages setup failed"
bl_clean_dpdk
"$REPO/scripts/guest/build-initramfs.sh" "$GUEST_DIR" >&2 || bl_die "guest build failed"
grep -qw /usr/bin/iperf3 "$GUEST_DIR/initramfs.gz.tools" 2>/dev/null || bl_die "no iperf3 in the guest initramfs"
MEAS=$W/measurements.jsonl
: >"$MEAS"
LOAD_START=$(bl_load_snapshot)

# ---------------------------------------------------------------- backends
# backend_start NAME: sets SOCK_A, SOCK_B, BACK_PID (and BACK_FD for testpmd);
# on failure returns 1 with the reason in START_ERR.

backend_start() {
  local c=$1 d=$W/$1
  mkdir -p "$d"
  START_ERR="" BACK_PID="" BACK_FD="" ROLE=server
  case $c in
    vpmd-on | vpmd-off)
      local off=""
      [[ $c == vpmd-off ]] && off=$OFFLOAD_OFF
      SOCK_A=$d/vm0.sock SOCK_B=$d/vm1.sock
      vpmd_veth_config "$BACK_CORE" "$d/control.sock" "$SOCK_A" "$SOCK_B" server 1500 "$off" "$off" \
        >"$d/vpmd.toml"
      bl_note "$c" "$VPMD run --config vpmd.toml   # vpmd.toml:"
      bl_note "$c" "$(sed 's/^/    /' "$d/vpmd.toml")"
      # A fresh log each time: "vpmd ready" from an earlier round must not count.
      RUST_LOG=warn,vpmd=info "$VPMD" run --config "$d/vpmd.toml" >"$d/vpmd.out" 2>"$d/vpmd.log" &
      BACK_PID=$!
      bl_register "$BACK_PID"
      if ! bl_wait_for 30 "vpmd ready" vpmd_ready "$d" || ! bl_alive "$BACK_PID"; then
        START_ERR="vpmd did not start: $(grep -m1 -o 'unknown field [^,]*' "$d/vpmd.log" ||
          tail -n 1 "$d/vpmd.log" | cut -c1-200)"
        return 1
      fi
      ;;
    testpmd-tso0 | testpmd-tso1)
      local tso=${c#testpmd-tso}
      SOCK_A=$d/a.sock SOCK_B=$d/b.sock
      rm -f "$SOCK_A" "$SOCK_B"
      local args=(-l "0,$BACK_CORE" --main-lcore 0 --no-pci --single-file-segments
        "--file-prefix=$P_BACK" --vdev "net_vhost0,iface=$SOCK_A,tso=$tso"
        --vdev "net_vhost1,iface=$SOCK_B,tso=$tso" -- -i --forward-mode=io --total-num-mbufs=32768)
      bl_note "$c" "dpdk-testpmd ${args[*]}"
      bl_note "$c" "testpmd> start"
      bl_tp_start back "$d/testpmd.log" "${args[@]}" ||
        { BACK_PID=$TP_PID BACK_FD=$TP_FD START_ERR="testpmd did not start"; return 1; }
      BACK_PID=$TP_PID BACK_FD=$TP_FD
      bl_tp_cmd "$BACK_FD" "$d/testpmd.log" start || { START_ERR="testpmd did not start forwarding"; return 1; }
      bl_wait_for 30 "testpmd's vhost sockets" test -S "$SOCK_B" ||
        { START_ERR="testpmd made no vhost-user sockets"; return 1; }
      ;;
    ovs)
      # Client ports (the guests listen), the kind OVS gives TSO to.
      SOCK_A=$d/vhost0 SOCK_B=$d/vhost1 ROLE=client BL_OVS_PORT_TYPE=dpdkvhostuserclient
      bl_ovs_start "$d" "$BACK_CORE" "$P_OVS" userspace-tso-enable=true ||
        { START_ERR="OVS did not start: $(tail -n 1 "$d/vswitchd.log" 2>/dev/null)"; return 1; }
      BACK_PID=$BL_OVS_PID
      ;;
  esac
}

# vpmd_ready DIR: vpmd is ready, or it is gone (then bl_wait_for stops waiting).
vpmd_ready() { ! bl_alive "$BACK_PID" || grep -q "vpmd ready" "$1/vpmd.log"; }

backend_stop() {
  case $1 in
    testpmd-*) [[ -n $BACK_PID ]] && bl_ours "$BACK_PID" && bl_tp_quit "$BACK_PID" "$BACK_FD" ;;
    vpmd-*) [[ -n $BACK_PID ]] && bl_stop_registered "$BACK_PID" 15 ;;
    ovs) bl_ovs_stop ;;
  esac
  bl_clean_dpdk
}

# ---------------------------------------------------------------- guests

# guest_start NAME SOCKET MAC APPEND: boot one guest (console in $W/NAME.log),
# in the socket role $ROLE (server: the backend listens); the command is noted
# with contender $CUR's.
guest_start() {
  local args=(--socket "$2" --role "$ROLE" --mac "$3" --guest-dir "$GUEST_DIR"
    --serial "$W/$1.log" --pidfile "$W/$1.pid" --append "$4")
  bl_note "$CUR" "scripts/guest/run-qemu.sh $(printf '%q ' "${args[@]}")"
  "$REPO/scripts/guest/run-qemu.sh" "${args[@]}" || return 1
  bl_register "$(cat "$W/$1.pid")"
}

guest_stop() { [[ -f $W/$1.pid ]] && bl_stop_registered "$(cat "$W/$1.pid")" 10; rm -f "$W/$1.pid"; }

# iperf_done NAME: guest NAME printed its VPMD-IPERF line (or its QEMU is gone).
iperf_done() {
  grep -aq '^VPMD-IPERF ' "$W/$1.log" 2>/dev/null || ! bl_alive "$(cat "$W/$1.pid")"
}

# measure CONTENDER ROUND: one transfer a -> b through CONTENDER; appends one
# JSON line to $MEAS (a skip with its reason if the backend did not start).
measure() {
  local c=$1 r=$2 a=a-$1-$2 b=b-$1-$2 line
  CUR=$c
  bl_log "round $r: $c"
  if ! backend_start "$c"; then
    bl_log "  $c skipped: $START_ERR"
    jq -nc --arg c "$c" --argjson r "$r" --arg e "$START_ERR" '{contender: $c, round: $r, skipped: $e}' >>"$MEAS"
    backend_stop "$c"
    return 0
  fi
  if ! { guest_start "$b" "$SOCK_B" "$MAC_B" \
      "vpmd.ip=198.18.0.2/24 vpmd.peer=198.18.0.1 vpmd.count=3 vpmd.iperf_server=1" &&
    guest_start "$a" "$SOCK_A" "$MAC_A" \
      "vpmd.ip=198.18.0.1/24 vpmd.peer=198.18.0.2 vpmd.count=3 vpmd.iperf=198.18.0.2 vpmd.iperf_time=$TIME"; }; then
    bl_log "  $c: a guest did not start"
  fi
  bl_wait_for $((TIME + 150)) "guest $a's iperf3 result" iperf_done "$a" || true
  line=$(grep -a '^VPMD-IPERF ' "$W/$a.log" 2>/dev/null | tail -n 1 | tr -d '\r')
  local offl ports=null
  offl=$(grep -a '^VPMD-OFFLOADS ' "$W/$a.log" 2>/dev/null | tail -n 1 | tr -d '\r' | cut -d' ' -f2-)
  # vpmd's view while the guests still run: features, offload counters, drops.
  if [[ $c == vpmd-* ]]; then
    ports=$("$VPMD" stats --json --control "$W/$c/control.sock" 2>/dev/null |
      jq -c '[.ports[] | {name, features, offloads, drops}]') || ports=null
  fi
  guest_stop "$a"
  guest_stop "$b"
  backend_stop "$c"
  bl_noted "$c"
  if [[ -z $line || $line == *error=* ]]; then
    bl_log "  $c round $r failed: ${line:-no iperf3 result} (consoles $W/$a.log, $W/$b.log)"
    jq -nc --arg c "$c" --argjson r "$r" --arg e "${line:-no iperf3 result}" \
      '{contender: $c, round: $r, failed: $e}' >>"$MEAS"
    return 0
  fi
  jq -nc --arg c "$c" --argjson r "$r" --arg l "$line" --arg o "$offl" --argjson ports "${ports:-null}" \
    --arg load "$(cut -d' ' -f1 /proc/loadavg)" '
    ($l | split(" ") | .[1:] | map(split("=") | {(.[0]): .[1]}) | add) as $f
    | {contender: $c, round: $r, gbps: (($f.bits_per_second | tonumber) / 1e9),
       sent_bytes: ($f.sent_bytes | tonumber), received_bytes: ($f.received_bytes | tonumber),
       retransmits: ($f.retransmits | tonumber? // null), seconds: ($f.seconds | tonumber),
       guest_offloads: $o, loadavg1: ($load | tonumber)}
      + (if $ports == null then {} else {vpmd_ports: $ports} end)' >>"$MEAS"
  bl_log "  $c round $r: $(tail -n 1 "$MEAS" | jq -r '"\(.gbps * 1000 | round / 1000) Gbit/s, \(.retransmits) retransmits"')"
}

# ---------------------------------------------------------------- rounds

read -ra LIST <<<"$CONTENDERS"
for ((round = 1; round <= ROUNDS; round++)); do
  for ((i = 0; i < ${#LIST[@]}; i++)); do
    measure "${LIST[(i + round - 1) % ${#LIST[@]}]}" "$round"
  done
done

# ---------------------------------------------------------------- report

LOAD_END=$(bl_load_snapshot)
mkdir -p "$OUT"
NAME=iperf-$(date +%Y%m%d-%H%M%S)
((QUICK)) && NAME=iperf-quick-latest
jq -n --argjson machine "$(bl_machine_json)" --arg cmd "$CMDLINE" \
  --argjson load_start "$LOAD_START" --argjson load_end "$LOAD_END" \
  --arg date "$(date -Is)" --argjson quick "$QUICK" --arg qemu "$(qemu-system-x86_64 --version | head -n 1)" \
  --arg iperf "$(iperf3 --version | head -n 1)" --arg vpmd "$("$VPMD" --version 2>/dev/null || echo "$VPMD")" \
  --argjson cfg "$(jq -n --argjson rounds "$ROUNDS" --argjson t "$TIME" --arg c "$CONTENDERS" \
    '{rounds: $rounds, time_s: $t, contenders: ($c | split(" ") | map(select(. != "")))}')" \
  --argjson cmds "$(bl_cmds_json vpmd-on vpmd-off testpmd-tso0 testpmd-tso1 ovs)" \
  --slurpfile m "$MEAS" '
  def stats: sort as $s | {median: $s[($s | length) / 2 | floor], min: $s[0], max: $s[-1], n: ($s | length)};
  ($m | group_by(.contender) | map({key: .[0].contender, value: (
      [.[] | select(.gbps != null) | .gbps] as $g
      | if ($g | length) > 0 then ($g | stats) + {retransmits_median: ([.[] | .retransmits // empty] | stats | .median)}
        else {} end
      + {skipped: ([.[] | .skipped // empty] | first), failed: [.[] | .failed // empty]})}) | from_entries) as $sum
  | def med($k): $sum[$k].median // null;
  {date: $date, quick: ($quick == 1), command: $cmd, machine: ($machine + {qemu: $qemu, iperf3: $iperf}),
   vpmd: $vpmd, load: {start: $load_start, end: $load_end}, config: $cfg, commands: $cmds,
   summary: $sum,
   ratios: {vpmd_on_over_vpmd_off: (if med("vpmd-on") and med("vpmd-off") then med("vpmd-on") / med("vpmd-off") else null end),
            vpmd_on_over_best_reference: (([med("testpmd-tso1"), med("ovs")] | map(select(. != null)) | max) as $ref
              | if med("vpmd-on") and $ref then med("vpmd-on") / $ref else null end)},
   measurements: $m}' >"$W/raw.json"
cp "$W/raw.json" "$OUT/$NAME.json"

jq -r '
  def esc: gsub("\\|"; "\\|");
  def f: if . == null then "n/a" else (. * 1000 | round / 1000 | tostring) end;
  def r: if . == null then "n/a" else (. * 100 | round / 100 | tostring) end;
  "# Guest-to-guest TCP throughput (iperf3)\n",
  "\(.date)\(if .quick then " (quick run: one round, not for comparison)" else "" end)\n",
  "Machine: \(.machine.cores) cores, \(.machine.cpu), kernel \(.machine.kernel), \(.machine.os);",
  "\(.machine.qemu), \(.machine.iperf3), DPDK \(.machine.dpdk), OVS \(.machine.ovs); vpmd: \(.vpmd).",
  "Load average at start \(.load.start.loadavg), at end \(.load.end.loadavg).\n",
  "Command: `\(.command)`\n",
  "Two guests (QEMU TCG, -smp 1, 256 MiB, virtio-net vectors=0), guest a sends to guest b for \(.config.time_s) s (`iperf3 -c -t \(.config.time_s) -J`),",
  "booted afresh per measurement; the switch polls on core 1; \(.config.rounds) round(s), contenders alternating. Gbit/s as the receiver counted.\n",
  "| contender | median Gbit/s | min | max | rounds | median retransmits | note |",
  "|---|---:|---:|---:|---:|---:|---|",
  (.config.contenders[] as $c | .summary[$c] as $s
   | if $s == null then "| \($c) | n/a | | | 0 | | not run |"
     elif $s.median == null then "| \($c) | n/a | | | 0 | | skipped: \($s.skipped // ($s.failed | first) // "no result" | esc) |"
     else "| \($c) | \($s.median | f) | \($s.min | f) | \($s.max | f) | \($s.n) | \($s.retransmits_median // "n/a") | \(
       [if ($s.failed | length) > 0 then "\($s.failed | length) round(s) failed" else empty end,
        if $s.skipped then "skipped once: \($s.skipped)" else empty end] | join("; ") | esc) |" end),
  "",
  "Ratios of medians: vpmd-on / vpmd-off = \(.ratios.vpmd_on_over_vpmd_off | r); vpmd-on / max(testpmd-tso1, ovs) = \(.ratios.vpmd_on_over_best_reference | r).\n",
  "Guest a'"'"'s offloads as ethtool -k showed them, per contender (first round):\n",
  (.config.contenders[] as $c | ([.measurements[] | select(.contender == $c and .guest_offloads != null)] | first) as $x
   | select($x != null) | "- \($c): \($x.guest_offloads)"),
  "",
  "## Exact commands\n",
  (.commands | to_entries[] | select(.value - [""] != []) | "\(.key):\n\n```\n\(.value | join("\n"))\n```\n")
' "$W/raw.json" >"$OUT/$NAME.md"
((QUICK)) || cp "$OUT/$NAME.md" "$OUT/iperf-latest.md"
cat "$OUT/$NAME.md"
bl_log "results: $OUT/$NAME.md and $OUT/$NAME.json"
