#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# System test: TCP between two real Linux guests (QEMU/TCG) on a vpmd veth pair
# (server role), with checksum/TSO offloads. Guest a runs iperf3 against guest
# b for a fixed time, once forward (a sends) and once with -R (b sends).
#
#   case "on"   default config: every offload on, TSO frames pass whole
#   case "off"  vm1 with `offload = { csum = false, guest_csum = false }`: vpmd
#               must segment a's TSO frames and complete checksums in software
#
# Checks per case: both transfers moved data (the receiver got what the sender
# says it sent, less at most what TCP can leave in flight at the end; a stall
# fails), retransmits are reported; vpmd's counters equal the guests', have no
# drops but peer_down and no_rx_buffer (a full receive ring: where TCP's
# congestion control finds its losses), and satisfy, per direction,
#   sender tx_packets + (sw_segments - sw_segmented)
#     = peer rx_packets + peer rx_dropped + sender drops
# (a segmented frame counts once at the sender, its segments at the receiver,
# those the receiver could not take in its rx_dropped); the offload counters:
# tso_passed > 0 and nothing segmented in case on, sw_segmented > 0 and nothing
# passed whole to vm1 in case off; both guests negotiated GUEST_TSO4 in case on.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
check_prereqs
require_guest_iperf

IPERF_TIME=8                    # seconds per transfer
MIN_BYTES=$((1 << 20))          # fewer received bytes than this: a stalled transfer
IN_FLIGHT=$((16 << 20))         # what TCP may still hold at the end (send buffer + window)


# iperf_line GUEST REVERSE: guest's VPMD-IPERF line of that run.
iperf_line() {
  grep -a "^VPMD-IPERF .*reverse=$2 " "$WORK/$1.log" | tail -n 1 | tr -d '\r'
}
field() { sed -nE "s/.*[ ]$2=([^ ]*).*/\\1/p" <<<"$1"; }

# check_iperf CASE GUEST REVERSE: the run finished, moved data, and the
# receiver got what the sender sent (less what TCP leaves in flight at the end).
check_iperf() {
  local c=$1 g=$2 r=$3 line sent got rtx bps dir=forward
  ((r)) && dir=reverse
  wait_guest "$g" "^VPMD-IPERF .*reverse=$r " $((IPERF_TIME + 90))
  line=$(iperf_line "$g" "$r")
  [[ $line != *error=* ]] || fail "case $c $dir: iperf3 failed: $line"
  sent=$(field "$line" sent_bytes) got=$(field "$line" received_bytes)
  rtx=$(field "$line" retransmits) bps=$(field "$line" bits_per_second)
  [[ $sent =~ ^[0-9]+$ && $got =~ ^[0-9]+$ && $bps =~ ^[0-9]+$ ]] ||
    fail "case $c $dir: unparsable iperf3 result: $line"
  ((got >= MIN_BYTES)) || fail "case $c $dir: stalled: received $got bytes of $sent sent ($line)"
  ((got <= sent)) || fail "case $c $dir: received $got bytes, more than the $sent sent"
  ((sent - got <= IN_FLIGHT)) ||
    fail "case $c $dir: sent $sent bytes but received only $got ($((sent - got)) missing, more than TCP leaves in flight)"
  log "case $c $dir: $(awk -v b="$bps" 'BEGIN { printf "%.0f", b / 1e6 }') Mbit/s," \
    "sent $sent received $got bytes ($((sent - got)) in flight at the end), retransmits $rtx"
}

# assert_segment_accounting TIMEOUT_S SRC DST: on a quiet pair, frames taken
# from SRC, as the segments vpmd made of them, all reached DST or were dropped.
assert_segment_accounting() { wait_stats_check "$1" _segment_accounting "$2" "$3"; }
_segment_accounting() {
  local src=$1 dst=$2 json lhs rhs
  json=$STATS
  lhs=$(port_stat "$json" "$src" '.tx_packets + .offloads.sw_segments - .offloads.sw_segmented')
  rhs=$(jq -r --arg s "$src" --arg d "$dst" \
    '(.ports[] | select(.name == $d) | .rx_packets + .rx_dropped) + (.ports[] | select(.name == $s) | [.drops[]] | add)' <<<"$json")
  if [[ $lhs != "$rhs" ]]; then
    CHECK_MSG="accounting $src -> $dst: $lhs frames out of $src (segments counted) != $rhs delivered to $dst + dropped"
    return 1
  fi
  log "accounting $src -> $dst: $(port_stat "$json" "$src" \
    '"tx_packets \(.tx_packets) + (sw_segments \(.offloads.sw_segments) - sw_segmented \(.offloads.sw_segmented))"') = $dst rx_packets $(port_stat "$json" "$dst" .rx_packets) + rx_dropped $(port_stat "$json" "$dst" .rx_dropped) + $src drops $(port_stat "$json" "$src" '[.drops[]] | add')"
}

# run_case NAME VM1_OFFLOAD: one vpmd, guests a (client, vm0) and b (iperf3
# server, vm1) booted together, both transfers, all checks, clean stop.
run_case() {
  local c=$1 off=$2 dir="$WORK/$1" a="a-$1" b="b-$1" t0=$SECONDS json
  mkdir -p "$dir"
  vpmd_veth_config 1 "$CONTROL" "$dir/vm0.sock" "$dir/vm1.sock" server 1500 "" "$off" >"$WORK/$c.toml"
  start_vpmd "$WORK/$c.toml"
  local common="vpmd.count=5 vpmd.size=56"
  start_guest "$b" "$dir/vm1.sock" server 52:54:00:00:00:02 "" \
    "vpmd.ip=198.18.0.2/24 vpmd.peer=198.18.0.1 vpmd.iperf_server=1 $common"
  start_guest "$a" "$dir/vm0.sock" server 52:54:00:00:00:01 "" \
    "vpmd.ip=198.18.0.1/24 vpmd.peer=198.18.0.2 $common vpmd.iperf=198.18.0.2 vpmd.iperf_time=$IPERF_TIME vpmd.iperf_reverse=both"
  wait_guest "$a" '^VPMD-LINK' 90
  wait_guest "$b" '^VPMD-LINK' 90
  local g
  for g in "$a" "$b"; do
    log "guest $g: $(grep -a '^VPMD-OFFLOADS' "$WORK/$g.log" | tr -d '\r' || echo 'no VPMD-OFFLOADS (no ethtool)')"
  done
  assert_ping "$a" 56 5
  assert_ping "$b" 56 5

  check_iperf "$c" "$a" 0
  check_iperf "$c" "$a" 1
  ! grep -a '^VPMD-ERROR' "$WORK/$a.log" "$WORK/$b.log" || fail "errors inside a guest"

  # The negotiated features exist only while the guests' rings run.
  json=$(vpmd_stats_json) || fail "vpmd stats failed"
  for g in vm0 vm1; do
    log "port $g: features $(port_stat "$json" "$g" '.features // [] | join(",")');" \
      "offloads $(port_stat "$json" "$g" '.offloads | to_entries | map("\(.key)=\(.value)") | join(" ")')"
  done
  port_stat "$json" vm0 '.features // [] | any(. == "CSUM")' | grep -qx true ||
    fail "case $c: vm0's driver negotiated no CSUM"

  assert_counters_agree 60 "$a:vm0" "$b:vm1"
  # TCP probes for bandwidth until a queue overflows, and the only queue on this
  # path is the receiving guest's RX ring: frames vpmd found no buffer for there
  # are TCP's losses (its retransmits), reported, not an error.
  assert_no_drops --allow no_rx_buffer vm0 vm1
  assert_segment_accounting 10 vm0 vm1
  assert_segment_accounting 10 vm1 vm0

  {
    json=$(vpmd_stats_json) || fail "vpmd stats failed"
    local v
    case $c in
      on)
        for g in vm0 vm1; do
          [[ $(port_stat "$json" "$g" '.features // [] | any(. == "GUEST_TSO4")') == true ]] ||
            fail "case on: port $g did not negotiate GUEST_TSO4"
          v=$(port_stat "$json" "$g" .offloads.tso_passed)
          ((v > 0)) || fail "case on: port $g passed no TSO frames whole (tso_passed=$v)"
          v=$(port_stat "$json" "$g" .offloads.sw_segmented)
          ((v == 0)) || fail "case on: port $g segmented $v frames in software, both guests take TSO"
        done
        ;;
      off)
        v=$(port_stat "$json" vm0 .offloads.sw_segmented)
        ((v > 0)) || fail "case off: vpmd segmented none of a's frames for b (sw_segmented=$v)"
        v=$(port_stat "$json" vm1 .offloads.tso_passed)
        ((v == 0)) || fail "case off: port vm1 (no offloads) passed $v TSO frames"
        ;;
    esac
    log "case $c: offload counters as expected"
  }

  stop_pid "$(guest_pid "$a")" TERM 10
  stop_pid "$(guest_pid "$b")" TERM 10
  stop_vpmd
  log "case $c passed in $((SECONDS - t0)) s"
}

run_case on ""
run_case off "csum = false, guest_csum = false"
pass "iperf3 both ways, offloads on and off on vm1; counters and accounting agree"
