#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# test-timeout: 450
# System test: a port moved onto and off a running macvlan (README "Ports at
# runtime"), with one real QEMU guest, after vpmd has dropped every capability.
#
# A network namespace is the outside world (198.18.21.254 behind a veth, whose
# other end is vpmd's uplink). vpmd starts with one configured port on the
# macvlan (no guest on it) and no capability kept, then:
#  - `vpmd port add vm1` and `vpmd macvlan add-port UPLINK vm1`: the namespace
#    pings the guest on vm1 (the XDP program's MAC table now redirects its MAC;
#    that BPF map update needed no capability: its fd was opened at start-up);
#  - bad requests (an unknown uplink, a port already on it, an unknown port) are
#    refused naming the field, changing nothing;
#  - `vpmd macvlan del-port`: the namespace's pings go unanswered; add-port again:
#    answered again;
#  - `vpmd port del vm1` takes it off the macvlan and closes its connection;
#  - `vpmd reload` of a file that has vm1 on the macvlan adds it and puts it on
#    (vpmd connects to the guest's QEMU again: answered), of the first file takes
#    it off and removes it (unanswered);
#  - on every port, uplink included, tx_packets = forwarded + drops; SIGTERM stops
#    vpmd cleanly and leaves no XDP program on the uplink.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
check_prereqs

NS=vpmd-rm-$$
UP=vpmdrm$$
OUT=out0
NET=198.18.21
MAC1=52:54:00:00:21:02

add_netns "$NS"
add_veth "$UP" "$NS" "$OUT"
ip link set "$UP" up
ip -n "$NS" addr add "$NET.254/24" dev "$OUT"
ip -n "$NS" link set "$OUT" up

mkdir -p "$WORK/sock"
# write_config PORTS...: vm0 and, if named, vm1 (client role, as added below) on the macvlan.
write_config() {
  {
    printf '[pmd]\ncores = [1]\ncontrol_socket = "%s"\n' "$CONTROL"
    printf '\n[[port]]\nname = "vm0"\nsocket = "%s/sock/vm0.sock"\nmac = "52:54:00:00:21:01"\n' "$WORK"
    if [[ " $* " == *" vm1 "* ]]; then
      printf '\n[[port]]\nname = "vm1"\nsocket = "%s/sock/vm1.sock"\nmode = "client"\nmac = "%s"\n' \
        "$WORK" "$MAC1"
    fi
    printf '\n[[macvlan]]\nuplink = "%s"\nports = [%s]\n' "$UP" "$(printf '"%s",' "$@" | sed 's/,$//')"
  } >"$WORK/vpmd.toml"
}
write_config vm0

# ns_pings N: how many of N pings from the namespace the guest answers.
ns_pings() {
  ip -n "$NS" neigh flush dev "$OUT"
  ip netns exec "$NS" ping -c "$1" -i 0.3 -W 1 "$NET.2" 2>/dev/null |
    sed -n 's/.* \([0-9]*\) received.*/\1/p'
}

start_vpmd "$WORK/vpmd.toml"
grep -aq 'privileges: kept none' "$VPMD_LOG" || fail "vpmd kept capabilities"
# vm1 in the client role: QEMU listens, so that vpmd can connect again after the
# port is removed and added back.
vctl port add vm1 --socket "$WORK/sock/vm1.sock" --mac "$MAC1" --mode client >/dev/null ||
  fail "port add vm1"
start_guest g "$WORK/sock/vm1.sock" client "$MAC1" "" "vpmd.ip=$NET.2/24"
wait_guest g '^VPMD-LINK' 120
[[ $(ns_pings 3) == 0 ]] || fail "the guest answered before its port was on the macvlan"

vctl macvlan add-port "$UP" vm1 >/dev/null || fail "macvlan add-port $UP vm1"
[[ $(vctl port list --json | jq -r '.ports[] | select(.name == "vm1") | .attached') == "macvlan on $UP" ]] ||
  fail "vm1 not listed on the macvlan"
got=0
for _ in 1 2 3 4 5 6; do got=$(ns_pings 5); [[ $got == 5 ]] && break; sleep 2; done
[[ $got == 5 ]] || fail "the namespace got $got/5 answers from the guest on vm1 after add-port"
log "after macvlan add-port: the namespace pings the guest, 5/5"

refused macvlan.uplink macvlan add-port nosuch0 vm1
refused macvlan.port macvlan add-port "$UP" vm1
refused macvlan.port macvlan add-port "$UP" nosuch
refused macvlan.port macvlan del-port "$UP" nosuch
refused port.mac port add vm2 --socket "$WORK/sock/vm2.sock" --mac "$MAC1"

r=$(vctl macvlan del-port "$UP" vm1) || fail "macvlan del-port"
log "macvlan del-port: $r"
[[ $(ns_pings 3) == 0 ]] || fail "the guest still answered after del-port"
log "after macvlan del-port: no answers"
vctl macvlan add-port "$UP" vm1 >/dev/null || fail "macvlan add-port again"
[[ $(ns_pings 5) == 5 ]] || fail "no answers after add-port again"
log "after add-port again: 5/5"

r=$(vctl port del vm1) || fail "port del vm1"
[[ $(jq -c .macvlan_removed <<<"$r") == "[\"$UP\",\"vm1\"]" && $(jq -r .connected <<<"$r") == true ]] ||
  fail "port del vm1: $r"
log "port del vm1: $r"
[[ $(ns_pings 3) == 0 ]] || fail "the guest answered after its port was removed"

write_config vm0 vm1
r=$(vctl reload) || fail "reload with vm1 on the macvlan"
log "reload with vm1 on the macvlan: $r"
[[ $(jq -c .add_ports <<<"$r") == '["vm1"]' && $(jq -c .macvlan_add <<<"$r") == "[[\"$UP\",\"vm1\"]]" ]] ||
  fail "reload did not add vm1 onto the macvlan: $r"
got=0
for _ in 1 2 3 4 5 6 7 8 9 10; do got=$(ns_pings 5); [[ $got == 5 ]] && break; sleep 2; done
[[ $got == 5 ]] || fail "the namespace got $got/5 answers after the reload put vm1 back"
log "after reload: the namespace pings the guest again, 5/5"
write_config vm0
r=$(vctl reload) || fail "reload without vm1"
[[ $(jq -c .macvlan_del <<<"$r") == "[[\"$UP\",\"vm1\"]]" && $(jq -c .del_ports <<<"$r") == '["vm1"]' ]] ||
  fail "reload did not take vm1 off: $r"
[[ $(ns_pings 3) == 0 ]] || fail "the guest answered after the reload took vm1 off"
log "reload without vm1: taken off and removed, no answers"

json=$(vpmd_stats_json)
bad=$(jq -r '.ports[] | select(.tx_packets != .forwarded + ([.drops[]] | add)) | .name' <<<"$json")
[[ -z $bad ]] || fail "counters do not add up on: $bad"
stop_pid "$(guest_pid g)" TERM 10
stop_vpmd
! ip -d link show dev "$UP" | grep -q "prog/xdp" || fail "an XDP program is still attached to $UP"
pass "a port moved onto, off and onto a running macvlan, and by reload, with no capability held; bad requests refused"
