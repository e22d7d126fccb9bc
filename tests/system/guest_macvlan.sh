#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# System test: macvlan mode with real Linux guests (QEMU/TCG).
#
# A network namespace made here is the outside world: a veth pair, one end
# (198.18.20.254/24) in the namespace, the other end vpmd's uplink, which also
# carries a host address of its own (198.18.20.253/24).
#
# bridge mode, three guests (198.18.20.1-3):
#   - each guest pings the namespace host and the other two guests: 0% loss;
#   - the namespace pings the uplink's own address while vpmd runs (XDP_PASS path);
#   - broadcast ARP requests sent from the namespace reach every guest (each VM
#     port's rx count grows by them), and the namespace can ping the guests after
#     flushing its neighbour table (ARP resolved through the flood);
#   - on every port, uplink included: tx_packets = forwarded + drops;
#   - after vpmd stops, no XDP program is left on the uplink.
# private mode, two guests: guest-to-namespace pings pass, guest-to-guest fail;
#   then guest pb forges its source MAC: its pings fail and vpmd counts `spoofed`.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
check_prereqs
command -v python3 >/dev/null || fail "python3 missing"

COUNT=10
NS=vpmd-mv-$$
UP=vpmdup$$                # vpmd's uplink (host side)
OUT=out0                   # the namespace's end
NET=198.18.20
MACS=(52:54:00:00:20:01 52:54:00:00:20:02 52:54:00:00:20:03)

add_netns "$NS"
add_veth "$UP" "$NS" "$OUT"
ip addr add "$NET.253/24" dev "$UP"
ip link set "$UP" up
ip -n "$NS" addr add "$NET.254/24" dev "$OUT"
ip -n "$NS" link set "$OUT" up

# write_macvlan_config FILE MODE NPORTS
write_macvlan_config() {
  local file=$1 mode=$2 n=$3 i ports=""
  mkdir -p "$WORK/sock"
  printf '[pmd]\ncores = [1]\ncontrol_socket = "%s"\n' "$CONTROL" >"$file"
  for ((i = 0; i < n; i++)); do
    printf '\n[[port]]\nname = "vm%d"\nsocket = "%s/sock/vm%d.sock"\nmac = "%s"\n' \
      "$i" "$WORK" "$i" "${MACS[$i]}" >>"$file"
    ports+="${ports:+, }\"vm$i\""
  done
  printf '\n[[macvlan]]\nuplink = "%s"\nmode = "%s"\nports = [%s]\n' "$UP" "$mode" "$ports" >>"$file"
}

# guest_result NAME PEER: "transmitted received" of the guest's pings to PEER.
guest_result() {
  { grep -a "^VPMD-RESULT ping size=56 .* peer=$2" "$WORK/$1.log" || true; } | tail -n 1 |
    sed -E 's/.*transmitted=([0-9]+) received=([0-9]+).*/\1 \2/'
}

# expect_pings NAME PEER WANT: WANT replies (0 means: must all fail).
expect_pings() {
  local tx rx
  read -r tx rx <<<"$(guest_result "$1" "$2")"
  [[ -n ${tx:-} ]] || fail "guest $1: no ping result for $2"
  if [[ $3 -eq 0 ]]; then
    [[ $rx -eq 0 ]] || fail "guest $1: $rx of $tx pings to $2 answered, wanted none"
  else
    [[ $tx -eq $3 && $rx -eq $3 ]] || fail "guest $1: ping $2: $rx/$tx, wanted $3/$3"
  fi
  log "guest $1 -> $2: $rx/$tx replies (wanted $3)"
}

# ns_broadcast_arp N: N ARP requests for an unused address, sent raw from the namespace.
ns_broadcast_arp() {
  ip netns exec "$NS" python3 - "$OUT" "$1" <<'PY'
import socket, struct, sys
ifname, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
mac = open(f"/sys/class/net/{ifname}/address").read().strip()
src = bytes.fromhex(mac.replace(":", ""))
arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + src + socket.inet_aton("198.18.20.254") \
    + b"\0" * 6 + socket.inet_aton("198.18.20.200")
for _ in range(n):
    s.send(b"\xff" * 6 + src + b"\x08\x06" + arp)
PY
}

# assert_ports_add_up: on every port (uplink too), tx_packets = forwarded + drops.
assert_ports_add_up() {
  local json bad
  json=$(vpmd_stats_json) || fail "vpmd stats failed"
  bad=$(jq -r '.ports[] | select(.tx_packets != .forwarded + ([.drops[]] | add))
               | "\(.name): tx=\(.tx_packets) forwarded=\(.forwarded) drops=\([.drops[]] | add)"' <<<"$json")
  [[ -z $bad ]] || fail "counters do not add up: $bad"
  log "counters add up on every port: $(jq -c '[.ports[] | {(.name): {tx: .tx_packets, fwd: .forwarded, rx: .rx_packets}}] | add' <<<"$json")"
}

# ---------------------------------------------------------------- bridge mode
write_macvlan_config "$WORK/bridge.toml" bridge 3
start_vpmd "$WORK/bridge.toml"
grep -q "uplink $UP: .*XDP" "$VPMD_LOG" || fail "vpmd did not log the uplink's XDP and socket modes"
common="vpmd.count=$COUNT vpmd.size=56"
start_guest a "$WORK/sock/vm0.sock" server "${MACS[0]}" "" \
  "vpmd.ip=$NET.1/24 vpmd.peers=$NET.254,$NET.2,$NET.3 $common"
start_guest b "$WORK/sock/vm1.sock" server "${MACS[1]}" "" \
  "vpmd.ip=$NET.2/24 vpmd.peers=$NET.254,$NET.1,$NET.3 $common"
start_guest c "$WORK/sock/vm2.sock" server "${MACS[2]}" "" \
  "vpmd.ip=$NET.3/24 vpmd.peers=$NET.254,$NET.1,$NET.2 $common"
for g in a b c; do wait_guest "$g" '^VPMD-DONE' 300; done
! grep -a '^VPMD-ERROR' "$WORK"/{a,b,c}.log || fail "errors inside a guest"
# Linux guests take GUEST_ANNOUNCE (they announce themselves after a live
# migration; docs/migration.md).
grep -q 'rings started, polling; features .*GUEST_ANNOUNCE' "$VPMD_LOG" ||
  fail "the guests did not negotiate GUEST_ANNOUNCE: $(grep -a 'rings started' "$VPMD_LOG" | head -n 1)"
expect_pings a "$NET.254" "$COUNT"; expect_pings a "$NET.2" "$COUNT"; expect_pings a "$NET.3" "$COUNT"
expect_pings b "$NET.254" "$COUNT"; expect_pings b "$NET.1" "$COUNT"; expect_pings b "$NET.3" "$COUNT"
expect_pings c "$NET.254" "$COUNT"; expect_pings c "$NET.1" "$COUNT"; expect_pings c "$NET.2" "$COUNT"

# The host's own address on the uplink answers while vpmd runs (XDP_PASS).
ip netns exec "$NS" ping -c 3 -W 2 "$NET.253" >/dev/null ||
  fail "the uplink's own address $NET.253 did not answer the namespace"
log "the uplink's own address answers the namespace"

# Broadcasts from the outside reach every guest.
before=$(vpmd_stats_json)
ns_broadcast_arp 5
sleep 2
after=$(vpmd_stats_json)
for p in vm0 vm1 vm2; do
  d=$(( $(port_stat "$after" "$p" .rx_packets) - $(port_stat "$before" "$p" .rx_packets) ))
  [[ $d -ge 5 ]] || fail "port $p received $d of 5 broadcast ARP requests from the namespace"
done
log "5 broadcast ARP requests from the namespace reached vm0, vm1 and vm2"
ip -n "$NS" neigh flush dev "$OUT"
for ip in "$NET.1" "$NET.2"; do
  ip netns exec "$NS" ping -c 2 -W 2 "$ip" >/dev/null ||
    fail "the namespace could not ping guest $ip after flushing its ARP cache"
done
log "the namespace resolves and pings the guests (ARP broadcast delivered)"

assert_ports_add_up
for g in a b c; do stop_pid "$(guest_pid "$g")" TERM 10; done
stop_vpmd
! ip -d link show dev "$UP" | grep -q "prog/xdp" || fail "an XDP program is still attached to $UP"
log "bridge mode passed; XDP program detached from $UP"

# ---------------------------------------------------------------- private mode
write_macvlan_config "$WORK/private.toml" private 2
start_vpmd "$WORK/private.toml"
start_guest pa "$WORK/sock/vm0.sock" server "${MACS[0]}" "" \
  "vpmd.ip=$NET.1/24 vpmd.peers=$NET.254 vpmd.fail_peers=$NET.2 $common"
start_guest pb "$WORK/sock/vm1.sock" server "${MACS[1]}" "" \
  "vpmd.ip=$NET.2/24 vpmd.peers=$NET.254 vpmd.fail_peers=$NET.1 vpmd.spoof=02:aa:00:00:20:02 $common"
for g in pa pb; do wait_guest "$g" '^VPMD-DONE' 300; done
expect_pings pa "$NET.254" "$COUNT"; expect_pings pa "$NET.2" 0
expect_pings pb "$NET.254" "$COUNT"; expect_pings pb "$NET.1" 0

# Guest pb forged its source MAC at the end: nothing got through, and vpmd counted it.
read -r tx rx <<<"$(grep -a '^VPMD-RESULT spoof' "$WORK/pb.log" | tail -n 1 |
  sed -E 's/.*transmitted=([0-9]+) received=([0-9]+).*/\1 \2/')"
[[ ${rx:-x} -eq 0 ]] || fail "guest pb with a forged MAC got ${rx:-no} answers"
spoofed=$(port_stat "$(vpmd_stats_json)" vm1 .drops.spoofed)
[[ $spoofed -gt 0 ]] || fail "vm1 sent with a forged MAC but drops.spoofed is $spoofed"
log "forged source MAC: 0/$tx answered, vm1 drops.spoofed=$spoofed"
assert_ports_add_up
for g in pa pb; do stop_pid "$(guest_pid "$g")" TERM 10; done
stop_vpmd
pass "macvlan bridge: guests reach each other and the outside, broadcasts reach every guest, the uplink's own address answers; private: guest-to-guest blocked, forged MAC stopped and counted"
