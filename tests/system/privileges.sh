#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Least privilege: socket ownership, vpmd without root, capabilities dropped
# after start-up (README "Privileges").
#
#  1. vpmd as root with every capability, veth ports with socket_owner /
#     socket_group / socket_mode and a control socket group:
#     - the socket files have exactly the configured owner, group and mode
#       (0600 root:root where nothing is configured);
#     - once "vpmd ready" is logged, every thread of vpmd has empty effective,
#       permitted, inheritable, ambient and bounding sets and NoNewPrivs 1
#       (/proc/<pid>/task/*/status), and traffic still flows: a frontend
#       running as the socket's owner (nobody) sends 20000 frames that arrive
#       intact and in order, and nobody may ask for stats (group nogroup);
#     - nobody cannot open the 0600 root-owned socket (permission denied).
#  2. vpmd as nobody with no capability at all (veth only, its socket directory
#     owned by nobody): starts, serves traffic between two frontends running as
#     nobody, stops cleanly.
#  3. macvlan with only CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF and CAP_IPC_LOCK
#     (root's uid, bounding set cut to those): starts, drops all four from
#     every thread, and frames still go out of and come in through the AF_XDP
#     uplink afterwards. Without CAP_NET_ADMIN, CAP_NET_RAW or CAP_BPF it
#     refuses to start (and without CAP_IPC_LOCK too, if RLIMIT_MEMLOCK is
#     below the UMEM).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ -x $VPMD ]] || fail "vpmd binary $VPMD missing (cargo build --release)"
[[ -x $BENCH ]] || fail "vpmd-bench binary $BENCH missing (cargo build --release)"
command -v setpriv >/dev/null || fail "setpriv missing (util-linux)"
command -v jq >/dev/null || fail "jq missing (run scripts/install-deps.sh)"
[[ $(id -u) -eq 0 ]] || fail "run as root (the test changes users and capabilities)"
NOBODY=$(id -u nobody) NOGROUP=$(getent group nogroup | cut -d: -f3)
[[ -n $NOBODY && -n $NOGROUP ]] || fail "no user nobody / group nogroup"
AS_NOBODY=(setpriv --reuid="$NOBODY" --regid="$NOGROUP" --clear-groups)
# Other users must reach the sockets under the (0700) work dir.
chmod 0755 "$WORK"

# start_vpmd_as CONFIG CMD_PREFIX...: like start_vpmd, with vpmd run under
# CMD_PREFIX (setpriv execs it, so the pid stays the same).
start_vpmd_as() {
  local config=$1; shift
  VPMD_N=$((VPMD_N + 1))
  VPMD_LOG=$WORK/vpmd.$VPMD_N.log
  VPMD_OUT=$WORK/vpmd.$VPMD_N.out
  rm -f "$CONTROL"
  "$@" "$VPMD" run --config "$config" >"$VPMD_OUT" 2>"$VPMD_LOG" &
  VPMD_PID=$!
  register_pid "$VPMD_PID" vpmd
  wait_for_log "$VPMD_LOG" 'vpmd ready' 30 "$VPMD_PID" || fail "vpmd did not become ready"
  log "vpmd running as '$*' (pid $VPMD_PID)"
}

# assert_caps_dropped PID BOUNDING: every thread's effective, permitted,
# inheritable and ambient sets are empty, NoNewPrivs is 1, and the bounding
# set is BOUNDING (hex, as /proc shows it).
assert_caps_dropped() {
  local pid=$1 bnd=$2 t n=0 line
  for t in /proc/"$pid"/task/*; do
    line=$(awk '/^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):/ { printf "%s%s ", $1, $2 }' "$t/status")
    [[ $line == "CapInh:0000000000000000 CapPrm:0000000000000000 CapEff:0000000000000000 CapBnd:$bnd CapAmb:0000000000000000 NoNewPrivs:1 " ]] ||
      fail "thread $(cat "$t/comm") ($t) still holds: $line"
    n=$((n + 1))
  done
  log "all $n threads of vpmd: no capabilities (bounding set $bnd), no_new_privs"
}

# checked_traffic DIR A B N [PREFIX...]: N frames from port A to port B by
# vpmd-bench frontends run under PREFIX; see assert_checked_stream.
checked_traffic() {
  local dir=$1 a=$2 b=$3 n=$4 rx
  shift 4
  "$@" "$BENCH" --json rxonly "$dir/$b.sock" --queue-size 1024 --idle-timeout 3 \
    >"$WORK/rx.json" 2>"$WORK/rx.log" &
  rx=$!
  register_pid "$rx" vpmd-bench
  wait_for_log "$WORK/rx.log" "rxonly ready" 30 "$rx" || fail "rxonly on $b did not start"
  wait_port_state "$b" up 20 || fail "$b not up"
  "$@" "$BENCH" txonly "$dir/$a.sock" --count "$n" --rate 20000 >"$WORK/tx.log" 2>&1 ||
    fail "txonly on $a failed: $(cat "$WORK/tx.log")"
  wait "$rx" || fail "rxonly on $b failed: $(cat "$WORK/rx.log")"
  assert_checked_stream "$WORK/rx.json" "$n" "$a" "$b"
}

# ------------------------------------------------- 1. root, owners, dropping
DIR=$WORK/s1
mkdir -m 0755 "$DIR"
cat >"$WORK/owners.toml" <<EOF
[pmd]
cores = [1]
control_socket = "$CONTROL"
control_socket_mode = "0660"
control_socket_group = "nogroup"

[[port]]
name = "p0a"
socket = "$DIR/p0a.sock"
mac = "52:54:00:00:00:0a"
socket_owner = "nobody"
socket_group = 4242
socket_mode = "0660"

[[port]]
name = "p0b"
socket = "$DIR/p0b.sock"
mac = "52:54:00:00:00:0b"

[[veth]]
ports = ["p0a", "p0b"]
EOF
start_vpmd_as "$WORK/owners.toml" env
for want in "$DIR/p0a.sock $NOBODY 4242 660" "$DIR/p0b.sock 0 0 600" "$CONTROL 0 $NOGROUP 660"; do
  read -r f _ _ _ <<<"$want"
  got=$(stat -c '%n %u %g %a' "$f")
  [[ $got == "$want" ]] || fail "socket owner/group/mode: got '$got', want '$want'"
done
log "sockets: p0a nobody:4242 0660, p0b root:root 0600, control root:nogroup 0660"
grep -aq 'privileges: kept none' "$VPMD_LOG" || fail "vpmd did not log what it dropped"
log "vpmd says: $(grep -a 'privileges:' "$VPMD_LOG" | sed 's/.*privileges:/privileges:/')"
assert_caps_dropped "$VPMD_PID" 0000000000000000
# nobody (the socket's owner) sends; root receives.
start_bench rxroot --json rxonly "$DIR/p0b.sock" --queue-size 1024 --idle-timeout 3
RX=$BENCH_PID
wait_for_log "$WORK/rxroot.log" "rxonly ready" 30 "$RX" || fail "rxonly on p0b did not start"
wait_port_state p0b up 20 || fail "p0b not up"
"${AS_NOBODY[@]}" "$BENCH" txonly "$DIR/p0a.sock" --count 20000 --rate 20000 >"$WORK/tx.log" 2>&1 ||
  fail "txonly as nobody on p0a failed: $(cat "$WORK/tx.log")"
wait "$RX" || fail "rxonly failed: $(cat "$WORK/rxroot.log")"
assert_checked_stream "$WORK/rxroot.out" 20000 p0a p0b
log "traffic flows after the drop (sender: nobody's frontend on p0a; receiver: root's on p0b)"
"${AS_NOBODY[@]}" "$VPMD" stats --control "$CONTROL" >/dev/null ||
  fail "nobody (group nogroup) cannot read stats from a root:nogroup 0660 control socket"
if "${AS_NOBODY[@]}" "$BENCH" probe "$DIR/p0b.sock" >"$WORK/denied.log" 2>&1; then
  fail "nobody connected to root's 0600 socket p0b"
fi
grep -q 'Permission denied' "$WORK/denied.log" || fail "nobody on p0b: $(cat "$WORK/denied.log")"
log "nobody may not open p0b (0600 root:root): $(tail -n1 "$WORK/denied.log")"
stop_vpmd
[[ ! -e $DIR/p0a.sock && ! -e $DIR/p0b.sock && ! -e $CONTROL ]] || fail "sockets left behind after stop"

# ------------------------------------------------- 2. nobody, no capabilities
DIR=$WORK/s2
mkdir -m 0755 "$DIR"
chown "$NOBODY:$NOGROUP" "$DIR"
write_pairs_config "$WORK/nobody.toml" "$DIR" 1
sed -i "s|^control_socket = .*|control_socket = \"$DIR/control.sock\"|" "$WORK/nobody.toml"
CONTROL=$DIR/control.sock
start_vpmd_as "$WORK/nobody.toml" "${AS_NOBODY[@]}" --inh-caps=-all --ambient-caps=-all --bounding-set=-all
[[ $(stat -c '%u %a' "$DIR/p0a.sock") == "$NOBODY 600" ]] || fail "p0a.sock: $(stat -c '%U %a' "$DIR/p0a.sock")"
assert_caps_dropped "$VPMD_PID" 0000000000000000
checked_traffic "$DIR" p0a p0b 20000 "${AS_NOBODY[@]}"
stop_vpmd
log "vpmd ran as nobody with no capabilities: served traffic, stopped cleanly"

# ------------------------------------------------- 3. macvlan, minimal set
NS=vpmd-priv-$$ UP=vpmdpv$$ OUT=out0
add_netns "$NS"
add_veth "$UP" "$NS" "$OUT"
ip link set "$UP" up
ip -n "$NS" addr add 198.18.31.254/24 dev "$OUT"
ip -n "$NS" link set "$OUT" up
DIR=$WORK/s3
mkdir -m 0755 "$DIR"
CONTROL=$WORK/control.sock
VM_MAC=52:54:00:00:31:01
cat >"$WORK/macvlan.toml" <<EOF
[pmd]
cores = [1]
control_socket = "$CONTROL"

[[port]]
name = "vm0"
socket = "$DIR/vm0.sock"
mac = "$VM_MAC"

[[macvlan]]
uplink = "$UP"
ports = ["vm0"]
EOF
MACVLAN_CAPS=(net_admin net_raw bpf ipc_lock)
bounding() { local c s="-all"; for c in "$@"; do s+=",+$c"; done; echo "$s"; }
# Each of the first three is needed: without it vpmd refuses to start.
need=(net_admin net_raw bpf)
# The UMEM is 16 MiB per queue: below that RLIMIT_MEMLOCK, CAP_IPC_LOCK is needed too.
memlock=$(ulimit -l)
if [[ $memlock != unlimited ]] && ((memlock < 16384)); then need+=(ipc_lock); fi
for missing in "${need[@]}"; do
  caps=()
  for c in "${MACVLAN_CAPS[@]}"; do [[ $c == "$missing" ]] || caps+=("$c"); done
  if timeout 20 setpriv --inh-caps=-all --bounding-set="$(bounding "${caps[@]}")" \
      "$VPMD" run --config "$WORK/macvlan.toml" >/dev/null 2>"$WORK/without-$missing.log"; then
    fail "vpmd ran a macvlan without cap_$missing"
  fi
  log "without cap_$missing: $(grep -a 'Error\|failed' "$WORK/without-$missing.log" | head -n1 | cut -c1-120)"
done
start_vpmd_as "$WORK/macvlan.toml" setpriv --inh-caps=-all --bounding-set="$(bounding "${MACVLAN_CAPS[@]}")"
# Without CAP_SETPCAP the bounding set stays as it was: net_admin, net_raw,
# ipc_lock (bits 12-14) and bpf (39). no_new_privs makes it moot.
BND=0000008000007000
assert_caps_dropped "$VPMD_PID" $BND
# Out: frames from the VM leave through AF_XDP and reach the namespace.
out0=$(ip netns exec "$NS" cat "/sys/class/net/$OUT/statistics/rx_packets")
"$BENCH" txonly "$DIR/vm0.sock" --count 1000 --rate 20000 --src-mac "$VM_MAC" \
  --dst-mac 02:00:00:00:31:fe >"$WORK/mv-tx.log" 2>&1 || fail "txonly on vm0 failed: $(cat "$WORK/mv-tx.log")"
sleep 1
out1=$(ip netns exec "$NS" cat "/sys/class/net/$OUT/statistics/rx_packets")
((out1 - out0 >= 1000)) || fail "only $((out1 - out0)) of 1000 frames from vm0 reached the namespace"
# In: the namespace sends to the VM's MAC; XDP redirects them to vm0.
start_bench mvrx --json rxonly "$DIR/vm0.sock" --duration 30 --idle-timeout 30
RX=$BENCH_PID
wait_for_log "$WORK/mvrx.log" "rxonly ready" 30 "$RX" || fail "rxonly on vm0 did not start"
wait_port_state vm0 up 20 || fail "vm0 not up"
ip -n "$NS" neigh replace 198.18.31.1 lladdr "$VM_MAC" dev "$OUT" nud permanent
ip netns exec "$NS" ping -c 20 -i 0.05 -W 1 198.18.31.1 >/dev/null 2>&1 || true
wait_value 10 yes sh -c "[ \$($VPMD stats --json --control $CONTROL | jq '.ports[] | select(.name == \"vm0\") | .rx_packets') -ge 20 ] && echo yes" ||
  fail "the namespace's 20 pings did not reach vm0: $(vpmd_stats_json)"
stop_pid "$RX" TERM 10
log "macvlan under no capabilities: 1000 frames out through AF_XDP, pings in to vm0 ($(port_stat "$(vpmd_stats_json)" vm0 .rx_packets) delivered)"
assert_caps_dropped "$VPMD_PID" $BND
stop_vpmd
pass "sockets get their owner/group/mode; vpmd runs as nobody; all capabilities dropped in every thread after start-up; traffic flows"
