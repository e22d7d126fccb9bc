#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# System test: DPDK's virtio-user with TSO and LRO negotiated passes large TCP
# frames through vpmd both ways. dpdk-testpmd sits in the middle of a TCP
# connection between two real Linux guests (QEMU/TCG), as a bump in the wire:
#
#   guest a -- vm0 ==veth== d0 -- testpmd csum fwd, TSO -- d1 ==veth== vm1 -- guest b
#                   (vpmd)          (net_virtio_user0/1)          (vpmd)
#
# testpmd's ports negotiate GUEST_TSO4/6 (--enable-lro) and HOST_TSO4/6 and CSUM
# (--tx-offloads tcp_tso, tcp_cksum): a guest's 64 KiB TCP frames reach testpmd
# whole, and its csum engine (`tso set 1448`) sends them on as TSO frames with a
# virtio-net header that vpmd passes whole to the other guest.
# Checks: iperf3 moves data both ways; vpmd passed TSO frames whole into testpmd
# (vm0's and vm1's tso_passed) and from testpmd (d0's and d1's tso_passed); d0
# and d1 negotiated HOST_TSO4 and GUEST_TSO4; no drops but no_rx_buffer and
# peer_down; no bad_offload anywhere.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/bench-lib.sh
source "$REPO/scripts/bench-lib.sh"
check_prereqs
require_guest_iperf

PREFIX=vpmdtso
IPERF_TIME=6
MIN_BYTES=$((1 << 20))
TP_LOG=$WORK/testpmd.log
TP_PID="" TP_FD=""
BL_WORK=$WORK
BL_NAME=$TEST_NAME

stop_testpmd() {
  [[ -n $TP_FD ]] && exec {TP_FD}>&-
  [[ -n $TP_PID ]] && stop_pid "$TP_PID" TERM 5
  # Only testpmd: the guests and vpmd are lib.sh's to stop.
  [[ -n $TP_PID ]] && wait "$TP_PID" 2>/dev/null
  BL_PREFIXES=("$PREFIX")
  bl_clean_dpdk
}
on_exit stop_testpmd

bl_install dpdk jq
"$REPO/scripts/hugepages.sh" 1024 "$PREFIX" >/dev/null || fail "could not set up hugepages"

mkdir -p "$WORK/sock"
port() { printf '\n[[port]]\nname = "%s"\nsocket = "%s/sock/%s.sock"\nmac = "%s"\n' "$1" "$WORK" "$1" "$2"; }
{
  printf '[pmd]\ncores = [1]\ncontrol_socket = "%s"\n' "$CONTROL"
  port vm0 52:54:00:00:31:01
  port d0 52:54:00:00:31:10
  port d1 52:54:00:00:31:11
  port vm1 52:54:00:00:31:02
  printf '\n[[veth]]\nports = ["vm0", "d0"]\n\n[[veth]]\nports = ["d1", "vm1"]\n'
} >"$WORK/vpmd.toml"
start_vpmd "$WORK/vpmd.toml"

# Lcore 0 forwards, 1 sits at the prompt. The csum engine rewrites the MACs: each
# port's frames go to the guest behind it (--eth-peer). 0x802c: TX offloads multi_segs, tcp_tso,
# tcp_cksum, udp_cksum (virtio has no IPv4 header checksum offload: `csum set ip sw`).
bl_tp_start testpmd "$TP_LOG" -l 0,1 --main-lcore 1 --no-pci --single-file-segments \
  --file-prefix="$PREFIX" \
  --vdev "net_virtio_user0,path=$WORK/sock/d0.sock,mrg_rxbuf=1" \
  --vdev "net_virtio_user1,path=$WORK/sock/d1.sock,mrg_rxbuf=1" \
  -- -i --forward-mode=csum --enable-lro --enable-scatter \
  --eth-peer=0,52:54:00:00:31:01 --eth-peer=1,52:54:00:00:31:02 \
  --tx-offloads=0x802c --total-num-mbufs=32768 ||
  fail "testpmd did not reach its prompt ($TP_LOG)"
tp() { bl_tp_cmd "$TP_FD" "$TP_LOG" "$1" || fail "testpmd: '$1' did not finish"; }
tp "port stop all"
for p in 0 1; do
  tp "csum set ip sw $p"
  tp "csum set tcp hw $p"
  tp "tso set 1448 $p"
done
tp "port start all"
tp "start"
wait_port_state d0 up 15 || fail "testpmd's port d0 not up"
wait_port_state d1 up 15 || fail "testpmd's port d1 not up"

start_guest b "$WORK/sock/vm1.sock" server 52:54:00:00:31:02 "" \
  "vpmd.ip=198.18.31.2/24 vpmd.peer=198.18.31.1 vpmd.count=3 vpmd.size=56 vpmd.iperf_server=1"
start_guest a "$WORK/sock/vm0.sock" server 52:54:00:00:31:01 "" \
  "vpmd.ip=198.18.31.1/24 vpmd.peer=198.18.31.2 vpmd.count=3 vpmd.size=56 vpmd.iperf=198.18.31.2 vpmd.iperf_time=$IPERF_TIME vpmd.iperf_reverse=both"
wait_guest a '^VPMD-LINK' 90
wait_guest b '^VPMD-LINK' 90
wait_guest a '^VPMD-RESULT ping' 60
json=$(vpmd_stats_json)
log "d0 features: $(port_stat "$json" d0 '.features // [] | join(",")'); vpmd: $(jq -c '[.ports[] | {name, tx_packets, rx_packets, drops: (.drops | with_entries(select(.value > 0)))}]' <<<"$json")"
tp "show port stats all"
log "testpmd: $(tail -c "+$((CMD_OFF + 1))" "$TP_LOG" | grep -E 'RX-packets|TX-packets' | tr -s ' ' | tr '\n' ';')"
assert_ping a 56 3

field() { sed -nE "s/.*[ ]$2=([^ ]*).*/\\1/p" <<<"$1"; }
for r in 0 1; do
  wait_guest a "^VPMD-IPERF .*reverse=$r " $((IPERF_TIME + 90))
  line=$(grep -a "^VPMD-IPERF .*reverse=$r " "$WORK/a.log" | tail -n 1 | tr -d '\r')
  [[ $line != *error=* ]] || fail "iperf3 (reverse=$r) failed: $line"
  got=$(field "$line" received_bytes)
  if ! [[ $got =~ ^[0-9]+$ ]] || ((got < MIN_BYTES)); then
    fail "iperf3 (reverse=$r) stalled: $line"
  fi
  log "reverse=$r: $(awk -v b="$(field "$line" bits_per_second)" 'BEGIN { printf "%.0f", b / 1e6 }') Mbit/s," \
    "received $got bytes, retransmits $(field "$line" retransmits)"
done

json=$(vpmd_stats_json)
for p in vm0 d0 d1 vm1; do
  log "$p: features $(port_stat "$json" "$p" '.features // [] | join(",")');" \
    "offloads $(port_stat "$json" "$p" '.offloads | to_entries | map(select(.value > 0)) | map("\(.key)=\(.value)") | join(" ")');" \
    "drops $(port_stat "$json" "$p" '.drops | to_entries | map(select(.value > 0)) | map("\(.key)=\(.value)") | join(" ")')"
done
for p in d0 d1; do
  for f in HOST_TSO4 GUEST_TSO4; do
    [[ $(port_stat "$json" "$p" ".features // [] | any(. == \"$f\")") == true ]] ||
      fail "testpmd's port $p did not negotiate $f"
  done
done
for p in vm0 vm1 d0 d1; do
  v=$(port_stat "$json" "$p" .offloads.tso_passed)
  ((v > 0)) || fail "port $p: no TSO frame passed whole from it (tso_passed=$v)"
  v=$(port_stat "$json" "$p" '[.drops | to_entries[] | select(.key != "no_rx_buffer" and .key != "peer_down") | .value] | add')
  ((v == 0)) || fail "port $p: $v frames dropped for other reasons than a full ring or a peer not up"
done
tp "stop"
log "testpmd: $(tail -c "+$((CMD_OFF + 1))" "$TP_LOG" | grep -E 'RX-packets|TX-packets' | tr -s ' ' | head -4 | tr '\n' ';')"
stop_pid "$(guest_pid a)" TERM 10
stop_pid "$(guest_pid b)" TERM 10
stop_vpmd
pass "guest -> vpmd -> testpmd (TSO, LRO) -> vpmd -> guest TCP both ways; TSO frames passed whole in and out of DPDK's virtio-user"
