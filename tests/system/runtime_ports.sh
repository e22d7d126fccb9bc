#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# test-timeout: 600
# System test: ports added and removed while vpmd runs (README "Ports at runtime"),
# with four real QEMU guests booted once, in parallel.
#
#  1. vpmd starts from a config with no [[port]] at all;
#  2. `vpmd port add` a and b, `vpmd veth add a b`; bad requests (a bad MAC, a
#     name or MAC in use, an unknown or already paired port, a bad MTU) are
#     refused with an error naming the field, and `vpmd port list` is unchanged;
#  3. guests a and b ping each other, then keep a counted stream of single pings
#     (vpmd.watch) going for the rest of the test;
#  4. meanwhile ports c and d are added and paired (their QEMUs, started with the
#     others, wait for vpmd to connect before they boot, so c and d boot now),
#     they ping each other; d is removed while c pings it (its connection
#     closed, its guest memory no longer mapped by vpmd when `port del` returns:
#     c's pings are lost) and added back (answered again);
#  5. the same through the file: `vpmd reload` with the running set written out
#     changes nothing; with d changed it restarts d; with c and d gone it removes
#     both; with them back it adds them; with pmd.cores changed it is refused and
#     changes nothing;
#  6. the first pair lost nothing throughout: every watch ping of a and b was
#     answered, their vpmd drop counters did not move after the pair was up, and
#     vpmd's counters for a and b equal the guests' own;
#  7. SIGTERM stops vpmd cleanly.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
check_prereqs

DIR=$WORK/sockets
CONFIG=$WORK/vpmd.toml
mkdir -p "$DIR"
# Single pings of the first pair, 0.2 s apart (about 0.35 s each under TCG with
# four guests): long enough to cover steps 4-5 (about 70 s here), checked below.
WATCH=300

mac_of() { printf '52:54:00:00:00:0%s' "$1"; }
add_port() { vctl port add "$1" --socket "$DIR/$1.sock" --mac "$(mac_of "$1")" --mode client "${@:2}"; }


# write_file PORTS... [-- VETHS...] [--cores LIST]: the config file with these
# ports (client role, as added above) and pairs "x-y".
write_file() {
  local cores="[1]" ports=() veths=() p v in_veths=0
  while (($#)); do
    case $1 in
      --) in_veths=1 ;;
      --cores) cores=$2; shift ;;
      *) if ((in_veths)); then veths+=("$1"); else ports+=("$1"); fi ;;
    esac
    shift
  done
  printf '[pmd]\ncores = %s\ncontrol_socket = "%s"\n' "$cores" "$CONTROL" >"$CONFIG"
  for p in "${ports[@]}"; do
    local extra=""
    [[ $p == d+ ]] && { p=d; extra="max_messages_per_sec = 2000"$'\n'; }
    printf '\n[[port]]\nname = "%s"\nsocket = "%s/%s.sock"\nmode = "client"\nmac = "%s"\n%s' \
      "$p" "$DIR" "$p" "$(mac_of "$p")" "$extra" >>"$CONFIG"
  done
  for v in "${veths[@]}"; do
    printf '\n[[veth]]\nports = ["%s", "%s"]\n' "${v%-*}" "${v#*-}" >>"$CONFIG"
  done
}

# first_pair_drops: every drop counter of a and b (constant while they lose nothing).
first_pair_drops() {
  vpmd_stats_json | jq -c '[.ports[] | select(.name == "a" or .name == "b") | {name, drops, rx_dropped, ring_errors}]'
}

# 1. No ports at all.
write_file
start_vpmd "$CONFIG"
grep -aq 'has no \[\[port\]\]: running with none' "$VPMD_LOG" || fail "no note about the empty config"
[[ $(vctl port list --json | jq '.ports | length') == 0 ]] || fail "ports listed on an empty config"

# 2. The first pair, and bad requests.
add_port a >/dev/null || fail "port add a"
add_port b >/dev/null || fail "port add b"
refused 'veth.ports[1]' veth add a nosuch
refused 'veth.ports[1]' veth add a a
vctl veth add a b >/dev/null || fail "veth add a b"
refused port.mac port add x --socket "$DIR/x.sock" --mac 52:54:00:zz:00:01
refused port.mac port add x --socket "$DIR/x.sock" --mac "$(mac_of a)"
refused port.mac port add x --socket "$DIR/x.sock" --mac 01:00:5e:00:00:01
refused port.name port add a --socket "$DIR/x.sock" --mac 52:54:00:00:01:01
refused port.name port add 'bad/name' --socket "$DIR/x.sock" --mac 52:54:00:00:01:01
refused port.socket port add x --socket "$DIR/a.sock" --mac 52:54:00:00:01:01
refused port.mtu port add x --socket "$DIR/x.sock" --mac 52:54:00:00:01:01 --mtu 9001
refused port.socket_owner port add x --socket "$DIR/x.sock" --mac 52:54:00:00:01:01 --mode client --socket-owner 0
refused 'veth.ports[0]' veth add a b
refused port.name port del nosuch
refused veth.port veth del nosuch
[[ -e $DIR/x.sock ]] && fail "a refused port left its socket behind"

# 3. Four guests boot in parallel; c and d wait long for their peer (added later).
# The first pair's pings wait up to 3 s for their reply: four TCG guests on two
# shared cores can be slow to answer, and a late reply is not a lost frame (vpmd's
# own counters below say whether any frame was lost).
start_guest a "$DIR/a.sock" client "$(mac_of a)" "" \
  "vpmd.ip=198.18.0.1/24 vpmd.peer=198.18.0.2 vpmd.count=5 vpmd.size=56 vpmd.watch=$WATCH vpmd.watch_wait=3"
start_guest b "$DIR/b.sock" client "$(mac_of b)" "" \
  "vpmd.ip=198.18.0.2/24 vpmd.peer=198.18.0.1 vpmd.count=5 vpmd.size=56 vpmd.watch=$WATCH vpmd.watch_wait=3"
start_guest c "$DIR/c.sock" client "$(mac_of c)" "" \
  "vpmd.ip=198.18.1.3/24 vpmd.peer=198.18.1.4 vpmd.count=5 vpmd.size=56 vpmd.watch=2000 vpmd.wait=280"
start_guest d "$DIR/d.sock" client "$(mac_of d)" "" \
  "vpmd.ip=198.18.1.4/24 vpmd.peer=198.18.1.3 vpmd.count=5 vpmd.size=56 vpmd.wait=280"
assert_ping a 56 5
assert_ping b 56 5
wait_more a oks 3 60 --vpmd || fail "guest a: its watch pings are not answered"
wait_more b oks 3 60 --vpmd || fail "guest b: its watch pings are not answered"
DROPS_BEFORE=$(first_pair_drops)
log "first pair up and streaming; its drop counters: $DROPS_BEFORE"

# 4. The second pair, added, one port removed and added back, under the first's stream.
add_port c >/dev/null || fail "port add c"
add_port d >/dev/null || fail "port add d"
vctl veth add c d >/dev/null || fail "veth add c d"
grep -aE 'stream c->d assigned to the pmd thread on core 1' "$VPMD_LOG" >/dev/null ||
  fail "no log line for the new streams' thread"
assert_ping c 56 5
assert_ping d 56 5
wait_more c oks 3 60 --vpmd || fail "guest c: its watch pings of d are not answered"
wait_port_state d up 10 || fail "port d not up"
# d's guest memory (QEMU's memfd) is mapped by vpmd while d is connected, and
# unmapped once d is removed.
d_mem=$(memfd_inodes "$(guest_pid d)")
[[ -n $d_mem ]] || fail "guest d's QEMU maps no memfd"
mapped_d() { comm -12 <(memfd_inodes "$VPMD_PID") <(echo "$d_mem"); }
[[ -n $(mapped_d) ]] || fail "vpmd does not map guest d's memory while d is up"
del=$(vctl port del d) || fail "port del d failed"
log "port del d: $del"
[[ -z $(mapped_d) ]] || fail "guest d's memory still mapped by vpmd after port del d"
log "guest d's memory (memfd inode $d_mem) unmapped by vpmd once port del d returned"
[[ $(jq -r .connected <<<"$del") == true ]] || fail "port del d: its VM was not connected: $del"
[[ $(jq -c .veth_removed <<<"$del") == '["c","d"]' ]] || fail "port del d: its pair not removed: $del"
jq -e '.in_flight["c->d"] >= 0 and .in_flight["d->c"] >= 0' <<<"$del" >/dev/null ||
  fail "port del d: no in-flight counts: $del"
[[ $(vctl port list --json | jq '[.ports[].name] | index("d")') == null ]] || fail "d still listed"
wait_more c losts 2 30 --vpmd || fail "guest c: pings of a removed d were answered"
add_port d >/dev/null || fail "port add d again"
vctl veth add d c >/dev/null || fail "veth add d c"
wait_more c oks 3 90 --vpmd || fail "guest c: no answers from d after it was added back"
log "d removed under c's stream (pings lost) and added back (answered again)"

# 5. The same through the config file and `vpmd reload` (SIGHUP once).
write_file a b c d -- a-b c-d
r=$(vctl reload) || fail "reload of the running set failed"
[[ $(jq -r .reload <<<"$r") == "nothing to do" ]] || fail "reload of the running set changed something: $r"
write_file a b c d+ -- a-b c-d
r=$(vctl reload) || fail "reload with d changed failed"
[[ $(jq -c .restarted <<<"$r") == '["d"]' ]] || fail "reload with d changed: d not restarted: $r"
log "reload with d changed: $r"
wait_more c oks 3 90 --vpmd || fail "guest c: no answers from d after its restart"
write_file a b -- a-b
r=$(vctl reload) || fail "reload without c and d failed"
[[ $(jq -c .del_ports <<<"$r") == '["c","d"]' ]] || fail "reload without c, d: $r"
wait_more c losts 2 30 --vpmd || fail "guest c: pings answered with c and d removed"
write_file a b c d -- a-b c-d
kill -HUP "$VPMD_PID"
wait_for_log "$VPMD_LOG" 'SIGHUP: reload: .*"add_ports":\["c","d"\]' 30 "$VPMD_PID" ||
  fail "SIGHUP did not add c and d back"
wait_more c oks 3 90 --vpmd || fail "guest c: no answers from d after the reload added them back"
log "reload: c and d removed, then added back by SIGHUP; c's pings answered again"
write_file a b c d -- a-b c-d --cores '[0, 1]'
refused pmd.cores reload

# 6. The first pair lost nothing: vpmd dropped none of its frames after it was up,
# delivered every frame it took (accounting), and each guest received exactly
# what vpmd delivered to it and sent exactly what vpmd took (counters agree);
# and every watch ping was answered.
(($(oks a) + $(losts a) < WATCH)) || fail "guest a's watch ended before the last step: raise WATCH"
wait_guest a '^VPMD-RESULT watch' 200
wait_guest b '^VPMD-RESULT watch' 200
DROPS_AFTER=$(first_pair_drops)
[[ $DROPS_AFTER == "$DROPS_BEFORE" ]] ||
  fail "first pair's drop counters moved: $DROPS_BEFORE -> $DROPS_AFTER"
assert_counters_agree 60 a:a b:b
assert_no_drops a b
assert_port_accounting "$(vpmd_stats_json)" a b
assert_port_accounting "$(vpmd_stats_json)" b a
for g in a b; do
  line=$(grep -a '^VPMD-RESULT watch' "$WORK/$g.log" | tr -d '\r')
  [[ $line == *" lost=0 "* ]] || fail "guest $g lost pings while ports came and went: $line"
  log "guest $g: $line"
done

# 7.
for g in a b c d; do stop_pid "$(guest_pid $g)" TERM 10; done
stop_vpmd
pass "empty start; ports and pairs added, removed and reloaded under traffic; first pair lost nothing"
