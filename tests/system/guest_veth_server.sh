#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# System test: two real Linux guests (QEMU/TCG) on a vpmd veth pair, vpmd in
# the server role (it listens, QEMU connects). Each guest pings the other
# (0% loss both ways); vpmd's per-port counters must equal what the guests'
# eth0 counted, with no drops other than peer_down (frames the first guest
# sent before the second was up). Run twice: MTU 1500, then MTU 9000 with
# 8972-byte pings (jumbo frames). Between pings the polling thread sleeps
# (adaptive polling, the default): the guests' kicks must wake it.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
check_prereqs

COUNT=20          # pings of 56 bytes each way
JUMBO_COUNT=5     # pings of 8972 bytes each way (MTU 9000 case)

# run_case MTU: one vpmd, two guests, all checks, clean stop.
run_case() {
  local mtu=$1 tag="mtu$1" dir="$WORK/mtu$1"
  local a="a-$tag" b="b-$tag" host_mtu="" extra=""
  write_config "$WORK/$tag.toml" server "$mtu" "$dir"
  start_vpmd "$WORK/$tag.toml"

  if [[ $mtu -gt 1500 ]]; then
    # The guest takes its MTU (and max MTU) from VIRTIO_NET_F_MTU, which QEMU
    # offers only with host_mtu set; a second ping run uses jumbo frames.
    host_mtu=$mtu
    extra="vpmd.size2=$((mtu - 28)) vpmd.count2=$JUMBO_COUNT"
  fi
  local common="vpmd.mtu=$mtu vpmd.count=$COUNT vpmd.size=56 $extra"

  # Guest a first, b once a has its link up: a's first ARP requests then
  # meet a peer that is not up yet (vpmd drops them as peer_down).
  start_guest "$a" "$dir/vm0.sock" server 52:54:00:00:00:01 "$host_mtu" \
    "vpmd.ip=198.18.0.1/24 vpmd.peer=198.18.0.2 $common"
  wait_guest "$a" '^VPMD-LINK' 90
  start_guest "$b" "$dir/vm1.sock" server 52:54:00:00:00:02 "$host_mtu" \
    "vpmd.ip=198.18.0.2/24 vpmd.peer=198.18.0.1 $common"
  wait_guest "$b" '^VPMD-LINK' 90

  local g
  for g in "$a" "$b"; do
    grep -aq "^VPMD-LINK mtu=$mtu " "$WORK/$g.log" ||
      fail "guest $g: eth0 MTU is not $mtu: $(grep -a '^VPMD-LINK\|^VPMD-ERROR' "$WORK/$g.log" | tr -d '\r')"
  done
  for g in "$a" "$b"; do
    assert_ping "$g" 56 "$COUNT"
    if [[ $mtu -gt 1500 ]]; then assert_ping "$g" $((mtu - 28)) "$JUMBO_COUNT"; fi
  done
  ! grep -a '^VPMD-ERROR' "$WORK/$a.log" "$WORK/$b.log" || fail "errors inside a guest"

  wait_port_state vm0 up 10 || fail "port vm0 not up"
  wait_port_state vm1 up 10 || fail "port vm1 not up"
  assert_counters_agree 60 "$a:vm0" "$b:vm1"
  assert_no_drops vm0 vm1
  assert_accounting vm0 vm1
  assert_accounting vm1 vm0
  # Adaptive polling (the default): between pings (1 s apart) the polling thread
  # slept, and the guests' kicks (QEMU writing the kick eventfd) woke it.
  local kicked
  kicked=$(vpmd_stats_json | jq '[.threads[].woken_by_kick] | add')
  ((kicked >= COUNT)) ||
    fail "the polling thread was woken by a guest's kick $kicked times during $COUNT pings each way"
  log "MTU $mtu: the polling thread was woken by a guest's kick $kicked times"

  stop_pid "$(guest_pid "$a")" TERM 10
  stop_pid "$(guest_pid "$b")" TERM 10
  stop_vpmd
  log "case MTU $mtu passed"
}

run_case 1500
run_case 9000
pass "ping both ways 0% loss at MTU 1500 and 9000; vpmd counters agree with the guests"
