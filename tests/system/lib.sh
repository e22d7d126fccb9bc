# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Shared helpers for the system tests (sourced, not run). Each test gets a work
# dir under /tmp; every process a test starts is registered and killed by the
# EXIT trap, pass or fail, and its sockets are removed.
#
# Environment:
#   VPMD       the daemon binary (default: <repo>/target/release/vpmd)
#   GUEST_DIR  where the guest kernel/initramfs are built (default: <repo>/target/guest)
#   KEEP_WORK  1: keep the work dir even when the test passes
# shellcheck shell=bash

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VPMD=${VPMD:-$REPO/target/release/vpmd}
GUEST_DIR=${GUEST_DIR:-$REPO/target/guest}
RUN_QEMU=$REPO/scripts/guest/run-qemu.sh
# shellcheck source=scripts/vpmd-config.sh
source "$REPO/scripts/vpmd-config.sh"
TEST_NAME=$(basename "$0" .sh)
WORK=$(mktemp -d "/tmp/vpmd-$TEST_NAME.XXXXXX")
CONTROL=$WORK/control.sock
VPMD_PID=""
VPMD_N=0          # how many times vpmd was started (log file suffix)
_PIDS=()          # "pid:comm" of every process we started
_FAILED=0
_EXIT_HOOKS=()    # functions run first at exit (on_exit)

# on_exit FUNCTION: run FUNCTION at exit, pass or fail, before the processes
# started here are stopped (for what a test must take down in its own order).
on_exit() { _EXIT_HOOKS+=("$1"); }

log() { echo "[$TEST_NAME $(date +%T)] $*"; }

# register_pid PID [COMM]: remember it with its command name, so cleanup never
# kills an unrelated process that got the same pid later. COMM is the name the
# process will have: right after `cmd &` /proc/PID/comm may still say "bash"
# (the fork has not exec'd yet), and cleanup would then skip it.
register_pid() {
  local comm=${2:-}
  [[ -n $comm ]] || comm=$(cat "/proc/$1/comm" 2>/dev/null) || return 0
  _PIDS+=("$1:$comm")
}

# alive PID: the process exists and is not a zombie (an exited child of ours
# that has not been waited for still answers kill -0).
alive() {
  kill -0 "$1" 2>/dev/null && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]
}

# stop_pid PID [SIGNAL] [WAIT_S]: signal a registered process and wait for it
# to exit; SIGKILL after WAIT_S seconds. Returns 0 if it is gone.
stop_pid() {
  local pid=$1 sig=${2:-TERM} wait_s=${3:-10} i
  alive "$pid" || return 0
  kill "-$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < wait_s * 10; i++)); do
    alive "$pid" || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  sleep 0.2
  ! alive "$pid"
}

_NETNS=()        # network namespaces we created
_LINKS=()        # links we created in the root namespace

# add_netns NAME: create a network namespace, deleted at exit.
add_netns() {
  ip netns add "$1" || fail "cannot create network namespace $1"
  _NETNS+=("$1")
  ip -n "$1" link set lo up
}

# add_veth HOST_IF NS NS_IF [QUEUES]: a veth pair with QUEUES (default one) RX/TX
# queues per end (one: every frame lands on AF_XDP queue 0), HOST_IF here and NS_IF
# in namespace NS.
add_veth() {
  local q=${4:-1}
  ip link add "$1" numrxqueues "$q" numtxqueues "$q" type veth \
    peer name "$3" netns "$2" numrxqueues "$q" numtxqueues "$q" || fail "cannot create veth $1"
  _LINKS+=("$1")
}

_cleanup() {
  local status=$? entry pid comm
  set +e
  for entry in "${_EXIT_HOOKS[@]}"; do "$entry"; done
  for entry in "${_PIDS[@]}"; do
    pid=${entry%%:*}; comm=${entry#*:}
    if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$comm" ]]; then
      stop_pid "$pid" TERM 5
    fi
  done
  wait 2>/dev/null
  for entry in "${_LINKS[@]}"; do ip link del "$entry" 2>/dev/null; done
  for entry in "${_NETNS[@]}"; do ip netns del "$entry" 2>/dev/null; done
  find "$WORK" -type s -delete 2>/dev/null
  if [[ $status -ne 0 || $_FAILED -ne 0 ]]; then
    echo "[$TEST_NAME] logs kept in $WORK" >&2
  elif [[ ${KEEP_WORK:-0} != 1 ]]; then
    rm -rf "$WORK"
  fi
}
trap _cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# fail MESSAGE: print the message and the tails of the logs, exit 1.
fail() {
  _FAILED=1
  echo "FAIL: $TEST_NAME: $*" >&2
  local f
  for f in "$WORK"/*.log; do
    [[ -f $f ]] || continue
    echo "----- tail of $f" >&2
    tail -n 25 "$f" | tr -d '\r' | grep -av $'\e\\[' >&2 || true
  done
  exit 1
}

pass() { echo "PASS: $TEST_NAME${1:+: $1}"; }

# wait_for_log FILE PATTERN TIMEOUT_S [PID]: wait until FILE has a line
# matching the extended regex PATTERN. Fails early if PID (when given) exits.
wait_for_log() {
  local file=$1 pattern=$2 timeout=$3 pid=${4:-} deadline
  deadline=$((SECONDS + timeout))
  while ((SECONDS < deadline)); do
    grep -aqE -- "$pattern" "$file" 2>/dev/null && return 0
    if [[ -n $pid ]] && ! alive "$pid"; then
      grep -aqE -- "$pattern" "$file" 2>/dev/null && return 0
      echo "wait_for_log: process $pid exited before '$pattern' appeared in $file" >&2
      return 1
    fi
    sleep 0.5
  done
  echo "wait_for_log: '$pattern' not in $file after ${timeout}s" >&2
  return 1
}

# check_prereqs: binaries the tests use.
check_prereqs() {
  [[ -x $VPMD ]] || fail "vpmd binary $VPMD missing (cargo build --release)"
  local b
  for b in qemu-system-x86_64 jq cpio gzip; do
    command -v "$b" >/dev/null || fail "$b missing (run scripts/install-deps.sh)"
  done
  "$REPO/scripts/guest/build-initramfs.sh" "$GUEST_DIR" >/dev/null || fail "guest build failed"
}

# start_vpmd CONFIG [--no-ready]: run vpmd in the background (stderr to
# $WORK/vpmd.N.log, stdout to $WORK/vpmd.N.out). Waits for "vpmd ready"
# (every server-role socket listening), or with --no-ready (client-role ports
# only, nothing to listen on) for the control socket.
start_vpmd() {
  local config=$1 mode=${2:-}
  VPMD_N=$((VPMD_N + 1))
  VPMD_LOG=$WORK/vpmd.$VPMD_N.log
  VPMD_OUT=$WORK/vpmd.$VPMD_N.out
  rm -f "$CONTROL"
  "$VPMD" run --config "$config" >"$VPMD_OUT" 2>"$VPMD_LOG" &
  VPMD_PID=$!
  register_pid "$VPMD_PID" "$(basename "$VPMD" | cut -c1-15)"
  if [[ $mode == --no-ready ]]; then
    local deadline=$((SECONDS + 30))
    until [[ -S $CONTROL ]]; do
      alive "$VPMD_PID" || fail "vpmd exited at start"
      ((SECONDS < deadline)) || fail "vpmd control socket $CONTROL did not appear"
      sleep 0.2
    done
  else
    wait_for_log "$VPMD_LOG" 'vpmd ready' 30 "$VPMD_PID" || fail "vpmd did not become ready"
  fi
  log "vpmd running (pid $VPMD_PID, log $VPMD_LOG)"
}

# stop_vpmd: SIGTERM, which must stop it cleanly (exit 0) within 10 s.
stop_vpmd() {
  [[ -n $VPMD_PID ]] || return 0
  kill -TERM "$VPMD_PID" 2>/dev/null || fail "vpmd was no longer running"
  local i rc
  for ((i = 0; i < 100; i++)); do
    alive "$VPMD_PID" || break
    sleep 0.1
  done
  ! alive "$VPMD_PID" || fail "vpmd did not stop within 10 s of SIGTERM"
  rc=0; wait "$VPMD_PID" || rc=$?
  [[ $rc -eq 0 ]] || fail "vpmd exited with status $rc after SIGTERM"
  log "vpmd stopped cleanly; final counters: $(tr '\n' ' ' <"$VPMD_OUT" | cut -c1-300)"
  VPMD_PID=""
}

# vpmd_stats_json: the running instance's counters as JSON.
vpmd_stats_json() {
  "$VPMD" stats --json --control "$CONTROL"
}

# port_stat JSON PORT JQ_PATH: one field of one port, e.g. port_stat "$j" vm0 .tx_packets
port_stat() {
  jq -r --arg p "$2" ".ports[] | select(.name == \$p) | $3" <<<"$1"
}

# wait_port_state PORT STATE TIMEOUT_S
wait_port_state() {
  local deadline=$((SECONDS + $3)) s=""
  while ((SECONDS < deadline)); do
    s=$(port_stat "$(vpmd_stats_json 2>/dev/null)" "$1" .state 2>/dev/null || true)
    [[ $s == "$2" ]] && return 0
    sleep 0.5
  done
  echo "port $1 state is '$s', wanted '$2' (after $3 s)" >&2
  return 1
}

# require_guest_iperf: fail unless the guest initramfs has Debian's iperf3.
require_guest_iperf() {
  grep -qw /usr/bin/iperf3 "$GUEST_DIR/initramfs.gz.tools" 2>/dev/null ||
    fail "no iperf3 in the guest initramfs (apt-get install iperf3, then rebuild the guest)"
}

# start_guest NAME SOCKET ROLE MAC HOST_MTU APPEND [RUN_QEMU_ARGS...]: boot a guest;
# its serial console goes to $WORK/NAME.log. HOST_MTU may be "" (QEMU default);
# further arguments go to run-qemu.sh (--smp 2 --queues 2).
start_guest() {
  local name=$1 sock=$2 role=$3 mac=$4 mtu=$5 append=$6
  shift 6
  local args=(--socket "$sock" --role "$role" --mac "$mac" --guest-dir "$GUEST_DIR"
              --serial "$WORK/$name.log" --pidfile "$WORK/$name.pid" --append "$append" "$@")
  [[ -n $mtu ]] && args+=(--host-mtu "$mtu")
  "$RUN_QEMU" "${args[@]}" || fail "run-qemu.sh failed for $name"
  register_pid "$(cat "$WORK/$name.pid")" qemu-system-x86
  log "guest $name started (pid $(cat "$WORK/$name.pid"), $role, $sock)"
}

guest_pid() { cat "$WORK/$1.pid"; }

# wait_guest NAME PATTERN TIMEOUT_S: wait for a serial console line; fails
# the test if QEMU exits first.
wait_guest() {
  wait_for_log "$WORK/$1.log" "$2" "$3" "$(guest_pid "$1")" || fail "guest $1: no '$2'"
}

# guest_ping_result NAME SIZE: "transmitted received" of the ping run of SIZE.
guest_ping_result() {
  grep -a "^VPMD-RESULT ping size=$2 " "$WORK/$1.log" | tail -n 1 |
    sed -E 's/.*transmitted=([0-9]+) received=([0-9]+).*/\1 \2/'
}

# assert_ping NAME SIZE COUNT: the guest's ping run of SIZE had COUNT replies.
assert_ping() {
  wait_guest "$1" "^VPMD-RESULT ping size=$2 " 150
  local tx rx
  read -r tx rx <<<"$(guest_ping_result "$1" "$2")"
  [[ $tx == "$3" && $rx == "$3" ]] ||
    fail "guest $1: ping -s $2: transmitted=$tx received=$rx, wanted $3/$3 (0% loss)"
  log "guest $1: ping -s $2: $rx/$tx replies"
}

# guest_counter NAME FIELD: the last VPMD-COUNTERS value of FIELD.
# Empty (not a failure) while the guest has not printed its counters yet.
guest_counter() {
  { grep -a '^VPMD-COUNTERS ' "$WORK/$1.log" || true; } | tail -n 1 | tr -d '\r' |
    sed -nE "s/.* $2=([0-9]+).*/\\1/p"
}

# wait_stats_check TIMEOUT_S CHECK ARGS...: every second, fetch vpmd's stats
# into STATS and run CHECK ARGS..., until it returns 0; a CHECK that returns 1
# leaves why in CHECK_MSG. After TIMEOUT_S the test fails with that message and
# the last stats are saved in $WORK/stats-at-failure.json.
wait_stats_check() {
  local deadline=$((SECONDS + $1))
  shift
  while true; do
    if STATS=$(vpmd_stats_json 2>&1); then
      "$@" && return 0
    else
      CHECK_MSG="vpmd stats failed: $STATS"
    fi
    ((SECONDS < deadline)) || { echo "$STATS" >"$WORK/stats-at-failure.json";
      fail "$CHECK_MSG (stats in $WORK/stats-at-failure.json)"; }
    sleep 1
  done
}

# assert_counters_agree TIMEOUT_S GUEST:PORT...: vpmd's counters for each port
# equal those the guest's eth0 reports (tx = frames the guest sent = frames
# vpmd took from it; rx likewise, packets and bytes). Guests print their
# counters once they have been still for 3 s and again after any later change
# (a late ARP probe), so retry until they agree or TIMEOUT_S runs out.
assert_counters_agree() {
  local timeout=$1; shift
  wait_stats_check "$timeout" _counters_agree "$@"
}

# _counters_agree GUEST:PORT...: the check of assert_counters_agree on $STATS.
_counters_agree() {
  local pair g p f gv pv diff=""
  for pair in "$@"; do
    g=${pair%%:*}; p=${pair#*:}
    for f in tx_packets rx_packets tx_bytes rx_bytes; do
      gv=$(guest_counter "$g" "$f"); pv=$(port_stat "$STATS" "$p" ".$f")
      [[ -n $gv && $gv == "$pv" ]] || diff+=" $g.$f=${gv:-?} vs vpmd $p.$f=$pv;"
    done
  done
  [[ -z $diff ]] || { CHECK_MSG="vpmd counters disagree with the guests:$diff"; return 1; }
  for pair in "$@"; do
    g=${pair%%:*}; p=${pair#*:}
    log "counters agree: guest $g = port $p: $(port_stat "$STATS" "$p" \
      '"tx_packets=\(.tx_packets) rx_packets=\(.rx_packets) tx_bytes=\(.tx_bytes) rx_bytes=\(.rx_bytes)"')"
  done
}

# assert_no_drops [--allow REASON]... PORT...: every drop counter is zero
# except peer_down (frames sent before the peer guest's driver was up) and the
# REASONs allowed, which are reported.
assert_no_drops() {
  local json p bad allowed=(peer_down) r shown ok
  while [[ ${1:-} == --allow ]]; do allowed+=("$2"); shift 2; done
  ok=$(printf '"%s",' "${allowed[@]}")
  json=$(vpmd_stats_json) || fail "vpmd stats failed"
  for p in "$@"; do
    bad=$(port_stat "$json" "$p" ".drops | to_entries | map(select(.value != 0 and (.key as \$k | [${ok%,}] | any(. == \$k) | not)))
      | map(\"\\(.key)=\\(.value)\") | join(\" \")")
    [[ -z $bad ]] || fail "port $p has drops: $bad"
    shown=""
    for r in "${allowed[@]}"; do shown+=" $r=$(port_stat "$json" "$p" ".drops.$r")"; done
    log "port $p: drops zero except${shown}"
  done
}

# assert_accounting PORT PEER: tx_packets of PORT = rx_packets of PEER + drops
# of PORT (interfaces.md), for a veth pair whose only traffic is between them.
assert_accounting() {
  local json tx rx drops
  json=$(vpmd_stats_json) || fail "vpmd stats failed"
  tx=$(port_stat "$json" "$1" .tx_packets)
  rx=$(port_stat "$json" "$2" .rx_packets)
  drops=$(port_stat "$json" "$1" '[.drops[]] | add')
  [[ $tx -eq $((rx + drops)) ]] ||
    fail "accounting: $1.tx_packets=$tx != $2.rx_packets=$rx + $1 drops=$drops"
}

# write_config FILE MODE MTU SOCKDIR: two ports vm0/vm1 in a veth pair, their
# sockets in SOCKDIR, control socket $CONTROL, polling on core 1.
write_config() {
  local file=$1 mode=$2 mtu=$3 sockdir=$4
  mkdir -p "$sockdir"
  vpmd_veth_config 1 "$CONTROL" "$sockdir/vm0.sock" "$sockdir/vm1.sock" "$mode" "$mtu" >"$file"
}

# ---------------------------------------------------------------------------
# Helpers for tests that drive ports with vpmd-bench (faults, soak, isolation,
# privileges).

BENCH=${VPMD_BENCH:-$REPO/target/release/vpmd-bench}

# check_bench_prereqs: the binaries and tools these tests use.
check_bench_prereqs() {
  [[ -x $VPMD ]] || fail "vpmd binary $VPMD missing (cargo build --release)"
  [[ -x $BENCH ]] || fail "vpmd-bench binary $BENCH missing (cargo build --release)"
  command -v jq >/dev/null || fail "jq missing (run scripts/install-deps.sh)"
}

# start_bench NAME ARGS...: run vpmd-bench ARGS in the background, stdout to
# $WORK/NAME.out, stderr to $WORK/NAME.log; its pid is left in BENCH_PID and
# registered for cleanup.
start_bench() {
  local name=$1; shift
  [[ -x $BENCH ]] || fail "vpmd-bench binary $BENCH missing (cargo build --release)"
  "$BENCH" "$@" >"$WORK/$name.out" 2>"$WORK/$name.log" &
  BENCH_PID=$!
  register_pid "$BENCH_PID" vpmd-bench
}

# settled PID [TRIES]: "fds threads" of PID once they have not changed for a
# second (or as they are after TRIES seconds, default 50).
settled() {
  local last="" now i
  for ((i = 0; i < ${2:-50}; i++)); do
    now="$(fd_count "$1") $(thread_count "$1")"
    [[ $now == "$last" ]] && { echo "$now"; return; }
    last=$now
    sleep 1
  done
  echo "$now"
}

# counter_delta PORT JQ_PATH: how much that counter of vpmd's PORT moves in a second.
counter_delta() {
  local a b
  a=$(port_stat "$(vpmd_stats_json)" "$1" "$2")
  sleep 1
  b=$(port_stat "$(vpmd_stats_json)" "$1" "$2")
  echo $((b - a))
}

# fd_count PID / thread_count PID / rss_kib PID [FIELD]: what a process holds.
fd_count() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
thread_count() { find "/proc/$1/task" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
rss_kib() { awk -v f="${2:-VmRSS}:" '$1 == f { print $2 }' "/proc/$1/status"; }

# memfd_inodes PID: inodes of the memfd files PID has mapped (guest memory).
memfd_inodes() {
  awk '$6 ~ /^\/memfd:/ { print $5 }' "/proc/$1/maps" 2>/dev/null | sort -u
}

# wait_value TIMEOUT_S WANT CMD...: wait until CMD prints WANT; returns 1
# (leaving the last output in WAIT_GOT) if it does not within TIMEOUT_S.
wait_value() {
  local timeout=$1 want=$2 deadline
  shift 2
  deadline=$((SECONDS + timeout))
  while true; do
    WAIT_GOT=$("$@" 2>/dev/null || true)
    [[ $WAIT_GOT == "$want" ]] && return 0
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# assert_port_accounting JSON PORT [PEER]: on PORT, tx_packets = forwarded +
# every drop counter (docs/interfaces.md), and with PEER (PORT's veth peer)
# forwarded = PEER's rx_packets. Exact: call it while no traffic flows.
assert_port_accounting() {
  local json=$1 p=$2 peer=${3:-} tx fwd drops rx
  tx=$(port_stat "$json" "$p" .tx_packets)
  fwd=$(port_stat "$json" "$p" .forwarded)
  drops=$(port_stat "$json" "$p" '[.drops[]] | add')
  [[ $tx =~ ^[0-9]+$ && $fwd =~ ^[0-9]+$ && $drops =~ ^[0-9]+$ ]] ||
    fail "accounting: no counters for port $p"
  [[ $tx -eq $((fwd + drops)) ]] ||
    fail "accounting: $p tx_packets=$tx != forwarded=$fwd + drops=$drops ($(port_stat "$json" "$p" '.drops | tostring'))"
  if [[ -n $peer ]]; then
    rx=$(port_stat "$json" "$peer" .rx_packets)
    [[ $fwd -eq $rx ]] || fail "accounting: $p forwarded=$fwd != $peer rx_packets=$rx"
  fi
  log "accounting exact on $p: tx_packets $tx = forwarded $fwd + drops $drops${peer:+, = $peer rx_packets}"
}

# write_pairs_config FILE SOCKDIR NPAIRS: NPAIRS veth pairs of server-role
# ports p<i>a/p<i>b (MACs 52:54:00:00:<i>:0a/0b), sockets in SOCKDIR,
# control socket $CONTROL, polling on core 1.
write_pairs_config() {
  local file=$1 sockdir=$2 n=$3 i s
  mkdir -p "$sockdir"
  printf '[pmd]\ncores = [1]\ncontrol_socket = "%s"\n' "$CONTROL" >"$file"
  for ((i = 0; i < n; i++)); do
    for s in a b; do
      printf '\n[[port]]\nname = "p%d%s"\nsocket = "%s/p%d%s.sock"\nmac = "52:54:00:00:%02x:0%s"\n' \
        "$i" "$s" "$sockdir" "$i" "$s" "$i" "$s" >>"$file"
    done
    printf '\n[[veth]]\nports = ["p%da", "p%db"]\n' "$i" "$i" >>"$file"
  done
}

# assert_checked_stream RXJSON SENT SRC DST: the rxonly report RXJSON of a
# stream of SENT test frames from port SRC to port DST (the only traffic on
# them since vpmd started): nothing corrupted, reordered, duplicated or
# foreign; every frame vpmd took from SRC (exactly SENT) was either delivered
# to DST (exactly what rxonly counted) or is in SRC's drop counters. Frames a
# loaded machine's receiver had no buffer for are such drops, so this holds
# however busy the machine is.
assert_checked_stream() {
  local rx=$1 sent=$2 src=$3 dst=$4 json f v got drops
  for f in corrupted reordered duplicates foreign; do
    v=$(jq -r ".$f" "$rx")
    [[ $v == 0 ]] || fail "$src -> $dst: $f = $v: $(cat "$rx")"
  done
  got=$(jq -r .frames "$rx")
  [[ $(jq -r .intact "$rx") == "$got" ]] || fail "$src -> $dst: not all frames intact: $(cat "$rx")"
  json=$(vpmd_stats_json) || fail "vpmd stats failed"
  [[ $(port_stat "$json" "$src" .tx_packets) == "$sent" ]] ||
    fail "$src -> $dst: $sent sent, vpmd took $(port_stat "$json" "$src" .tx_packets)"
  [[ $(port_stat "$json" "$dst" .rx_packets) == "$got" ]] ||
    fail "$src -> $dst: rxonly counted $got, vpmd delivered $(port_stat "$json" "$dst" .rx_packets)"
  drops=$(port_stat "$json" "$src" '[.drops[]] | add')
  [[ $((got + drops)) == "$sent" ]] || fail "$src -> $dst: sent $sent != delivered $got + dropped $drops"
  log "$src -> $dst: $sent sent = $got delivered intact and in order + $drops dropped$( ((drops)) &&
    echo " ($(port_stat "$json" "$src" '.drops | with_entries(select(.value > 0)) | tostring'))")"
}

# ---------------------------------------------------------------------------
# Helpers for tests that change ports at runtime and watch guests' pings.

vctl() { "$VPMD" "$@" --control "$CONTROL"; }
# What `port list` shows, without the link states (they change as guests come up).
layout() { vctl port list --json | jq -c '{ports: [.ports[] | del(.state)], veths, threads}'; }

# refused FIELD CMD...: CMD (a vpmd subcommand) fails with an error naming FIELD
# and leaves the ports as they were.
refused() {
  local field=$1 before after err
  shift
  before=$(layout)
  if err=$(vctl "$@" 2>&1); then fail "vpmd $*: accepted, wanted an error naming $field"; fi
  [[ $err == *"$field"* ]] || fail "vpmd $*: error does not name $field: $err"
  after=$(layout)
  [[ $before == "$after" ]] || fail "vpmd $*: refused, but the ports changed: $before -> $after"
  log "refused as it should be: vpmd $* -> ${err#vpmd: }"
}

# oks/losts NAME: answered / lost watch pings (vpmd.watch) of guest NAME so far.
oks() { grep -ac ' ok' <(grep -a '^VPMD-WATCH ' "$WORK/$1.log") || true; }
losts() { grep -ac ' lost' <(grep -a '^VPMD-WATCH ' "$WORK/$1.log") || true; }

# wait_more NAME FIELD N TIMEOUT_S [--vpmd]: until guest NAME has N more FIELD
# (oks or losts) than now; fails if its QEMU (or, with --vpmd, vpmd) exits.
wait_more() {
  local name=$1 what=$2 n=$3 timeout=$4 check_vpmd=${5:-} from deadline
  from=$($what "$name")
  deadline=$((SECONDS + timeout))
  until (($($what "$name") >= from + n)); do
    alive "$(guest_pid "$name")" || fail "guest $name's QEMU exited"
    [[ -z $check_vpmd ]] || alive "$VPMD_PID" || fail "vpmd exited"
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}
