#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# System test: TCP between a real Linux guest (QEMU/TCG) on a vpmd macvlan and a
# host in a network namespace behind the uplink (a veth), with the guest's
# checksum/TSO offloads on (vpmd's default).
#
#   guest (198.18.21.1) -- vpmd vm0 == macvlan == uplink veth -- namespace (198.18.21.254)
#
# iperf3 runs for a fixed time both ways (the guest sends, then the namespace sends):
#   case "tx-on"   the namespace's veth keeps its default TX checksum offload: the
#                  namespace's TCP frames reach vpmd with partial checksums, which
#                  vpmd completes or leaves to the guest (uplink_checksums = auto:
#                  a veth is a virtual interface). Before vpmd did this, the
#                  handshake never completed.
#   case "tx-off"  `ethtool -K PEER tx off`: the namespace sends complete checksums,
#                  vpmd finds nothing to fix.
#   cases "jumbo-tx-off", "jumbo-tx-on": the same at MTU 9000 (uplink veth, vm0 and
#                  the guest): 9014-byte frames take three UMEM chunks each way
#                  (AF_XDP multi-buffer), and jumbo pings cross both ways.
# Checks per case: both transfers moved data (received >= 1 MB, within what TCP
# leaves in flight of what was sent); the guest's TSO frames left the uplink
# segmented in software (vm0's offloads.sw_segmented > 0); the uplink counted
# partial checksums in case tx-on and none in case tx-off; on every port
# tx_packets = forwarded + drops, and no drops but no_rx_buffer / uplink_busy
# (TCP's losses where a queue fills) and peer_down (the namespace's frames for the
# guest before its driver runs, and after it stopped). At MTU 9000 also: vpmd
# reports the uplink multi-buffer with a 9018-byte max frame, the guest's eth0 has
# MTU 9000, and 8972-byte pings (9014-byte frames) get every reply.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
check_prereqs
command -v iperf3 >/dev/null || fail "iperf3 missing (scripts/install-deps.sh installs it)"
command -v ethtool >/dev/null || fail "ethtool missing (scripts/install-deps.sh installs it)"
require_guest_iperf

IPERF_TIME=6
MIN_BYTES=$((1 << 20))
IN_FLIGHT=$((16 << 20))
NS=vpmd-mo-$$
UP=vpmdmo$$
OUT=out0
NET=198.18.21

add_netns "$NS"
add_veth "$UP" "$NS" "$OUT"
ip link set "$UP" up
ip -n "$NS" addr add "$NET.254/24" dev "$OUT"
ip -n "$NS" link set "$OUT" up
ip netns exec "$NS" iperf3 -s >"$WORK/iperf3-server.log" 2>&1 &
# `ip netns exec` becomes iperf3 (exec): name it so, or cleanup would not know it.
register_pid $! iperf3

mkdir -p "$WORK/sock"
vpmd_macvlan_config 1 "$CONTROL" "$UP" "$WORK/sock" vm0=52:54:00:00:21:01 >"$WORK/vpmd.toml"
start_vpmd "$WORK/vpmd.toml"
grep -q "TCP/UDP checksums from it: fix" "$VPMD_LOG" ||
  fail "vpmd did not choose to fix partial checksums on a veth uplink: $(grep uplink "$VPMD_LOG")"

field() { sed -nE "s/.*[ ]$2=([^ ]*).*/\\1/p" <<<"$1"; }

# check_iperf CASE GUEST REVERSE: that run finished and moved what it says.
check_iperf() {
  local c=$1 g=$2 r=$3 line sent got bps dir=guest-sends
  ((r)) && dir=namespace-sends
  wait_guest "$g" "^VPMD-IPERF .*reverse=$r " $((IPERF_TIME + 90))
  line=$(grep -a "^VPMD-IPERF .*reverse=$r " "$WORK/$g.log" | tail -n 1 | tr -d '\r')
  [[ $line != *error=* ]] || fail "case $c $dir: iperf3 failed: $line"
  sent=$(field "$line" sent_bytes) got=$(field "$line" received_bytes) bps=$(field "$line" bits_per_second)
  [[ $sent =~ ^[0-9]+$ && $got =~ ^[0-9]+$ ]] || fail "case $c $dir: unparsable: $line"
  ((got >= MIN_BYTES)) || fail "case $c $dir: stalled: $got bytes received of $sent ($line)"
  ((got <= sent && sent - got <= IN_FLIGHT)) || fail "case $c $dir: sent $sent, received $got"
  log "case $c $dir: $(awk -v b="$bps" 'BEGIN { printf "%.0f", b / 1e6 }') Mbit/s," \
    "sent $sent received $got, retransmits $(field "$line" retransmits)"
}

# stat PORT JQ: one figure of vpmd's stats now.
stat() { port_stat "$(vpmd_stats_json)" "$1" "$2"; }

# run_case NAME MTU PARTIAL: one guest boot, both transfers, the checks; PARTIAL
# (yes/no): whether the namespace's frames arrive with partial checksums.
run_case() {
  local c=$1 mtu=$2 partial=$3 g="g-$1" t0=$SECONDS before_partial before_seg before_passed v host_mtu="" jumbo=""
  before_partial=$(stat "$UP" .offloads.partial_checksum)
  before_seg=$(stat vm0 .offloads.sw_segmented)
  before_passed=$(stat vm0 .offloads.csum_passed)
  if ((mtu > 1500)); then
    host_mtu=$mtu jumbo="vpmd.size2=$((mtu - 28)) vpmd.count2=3"
  fi
  start_guest "$g" "$WORK/sock/vm0.sock" server 52:54:00:00:21:01 "$host_mtu" \
    "vpmd.ip=$NET.1/24 vpmd.peer=$NET.254 vpmd.mtu=$mtu vpmd.count=3 vpmd.size=56 $jumbo vpmd.iperf=$NET.254 vpmd.iperf_time=$IPERF_TIME vpmd.iperf_reverse=both"
  wait_guest "$g" '^VPMD-LINK' 90
  grep -aq "^VPMD-LINK mtu=$mtu " "$WORK/$g.log" ||
    fail "case $c: guest eth0 MTU is not $mtu: $(grep -a '^VPMD-LINK\|^VPMD-ERROR' "$WORK/$g.log" | tr -d '\r')"
  log "guest $g: $(grep -a '^VPMD-OFFLOADS' "$WORK/$g.log" | tr -d '\r' || echo 'no VPMD-OFFLOADS')"
  assert_ping "$g" 56 3
  if ((mtu > 1500)); then assert_ping "$g" $((mtu - 28)) 3; fi
  check_iperf "$c" "$g" 0
  check_iperf "$c" "$g" 1
  local json
  json=$(vpmd_stats_json)
  log "vm0: features $(port_stat "$json" vm0 '.features // [] | join(",")')"
  for p in vm0 "$UP"; do
    log "$p: offloads $(port_stat "$json" "$p" '.offloads | to_entries | map("\(.key)=\(.value)") | join(" ")');" \
      "drops $(port_stat "$json" "$p" '.drops | to_entries | map(select(.value > 0)) | map("\(.key)=\(.value)") | join(" ")')"
  done
  v=$(port_stat "$json" "$UP" '"\(.uplink.max_frame) \(.uplink.multi_buffer) \(.uplink.tx_checksum_offload)"')
  [[ $v == "$((mtu + 18)) true true" ]] ||
    fail "case $c: uplink max frame, multi-buffer, tx checksum offload are '$v', wanted '$((mtu + 18)) true true'"
  [[ $(port_stat "$json" vm0 '.features | any(. == "HOST_TSO4")') == true ]] ||
    fail "case $c: the guest did not negotiate HOST_TSO4"
  v=$(($(port_stat "$json" vm0 .offloads.sw_segmented) - before_seg))
  ((v > 0)) || fail "case $c: none of the guest's TSO frames was segmented for the uplink"
  v=$(($(port_stat "$json" vm0 .offloads.csum_passed) - before_passed))
  ((v > 0)) || fail "case $c: none of the guest's checksum-only frames left with its checksum for the kernel"
  v=$(($(port_stat "$json" "$UP" .offloads.partial_checksum) - before_partial))
  case $partial in
    yes) ((v > 0)) || fail "case $c: no partial checksum seen from the namespace's veth" ;;
    no) ((v == 0)) || fail "case $c: $v partial checksums, with the peer's TX checksumming off" ;;
  esac
  log "case $c: $v partial checksums from the uplink"
  for p in vm0 "$UP"; do
    port_stat "$json" "$p" '.tx_packets == .forwarded + ([.drops[]] | add)' | grep -qx true ||
      fail "case $c: $p: tx_packets != forwarded + drops"
    v=$(port_stat "$json" "$p" '[.drops | to_entries[] | select(.key != "no_rx_buffer" and .key != "uplink_busy" and .key != "peer_down") | .value] | add')
    ((v == 0)) || fail "case $c: $p dropped $v frames for other reasons than a full queue"
  done
  stop_pid "$(guest_pid "$g")" TERM 10
  wait_port_state vm0 down 10 || fail "vm0 did not go down after its guest stopped"
  log "case $c passed in $((SECONDS - t0)) s"
}

run_case tx-on 1500 yes
ip netns exec "$NS" ethtool -K "$OUT" tx off >/dev/null
run_case tx-off 1500 no

# MTU 9000: the uplink's MTU is read when vpmd attaches, vm0's from its config.
stop_vpmd
ip link set "$UP" mtu 9000
ip -n "$NS" link set "$OUT" mtu 9000
sed -i '/^mac = /a mtu = 9000' "$WORK/vpmd.toml"
start_vpmd "$WORK/vpmd.toml"
grep -q "frames up to 9018 bytes each way (AF_XDP multi-buffer" "$VPMD_LOG" ||
  fail "vpmd did not take the uplink multi-buffer at MTU 9000: $(grep uplink "$VPMD_LOG")"
run_case jumbo-tx-off 9000 no
ip netns exec "$NS" ethtool -K "$OUT" tx on >/dev/null
run_case jumbo-tx-on 9000 yes
stop_vpmd
pass "guest <-> namespace TCP both ways over a veth uplink at MTU 1500 and 9000, with the peer's TX checksum offload on and off"
