# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Helpers for scripts/bench-compare.sh and scripts/bench-macvlan.sh (sourced,
# not run): logging, a registry
# of the processes we start (killed on exit, interrupt or failure, never one we
# did not start), dpdk-testpmd driven at its prompt through a fifo, Open
# vSwitch with DPDK, package installation and machine facts.
# shellcheck shell=bash

BL_PIDS=()        # "pid:starttime" of every process we started
BL_FDS=()         # fifo write ends we hold open (closed at cleanup)
BL_PREFIXES=()    # DPDK --file-prefix values we use (hugepage files, runtime dirs)
BL_WORK=""        # work dir, removed at cleanup unless KEEP_WORK=1
BL_LOCK_FD=""
BL_LOCK_FILE=""
BL_NAME=${BL_NAME:-bench-compare} # for messages
BL_CLEANUP_HOOKS=() # functions run at cleanup once our processes are stopped

bl_log() { echo "[bench $(date +%T)] $*" >&2; }
bl_die() {
  echo "$BL_NAME: $*" >&2
  exit 1
}

# bl_common_option ARGS...: the options every benchmark takes, for the last
# case of its option loop: --out DIR (sets OUT), --no-build (BUILD=0),
# --keep-work, -h/--help (prints the script's header comment); anything else is
# an error. Sets BL_OPT_ARGS to how many arguments it took (1 or 2).
# shellcheck disable=SC2034 # OUT, BUILD and BL_OPT_ARGS are for the caller
bl_common_option() {
  BL_OPT_ARGS=1
  case $1 in
    --out) OUT=${2:?--out needs a directory}; BL_OPT_ARGS=2 ;;
    --no-build) BUILD=0 ;;
    --keep-work) export KEEP_WORK=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) bl_die "unknown option '$1' (see --help)" ;;
  esac
}

# bl_alive PID: the process exists and is not a zombie.
bl_alive() {
  kill -0 "$1" 2>/dev/null && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]
}

# bl_starttime PID: when PID started (clock ticks since boot); survives exec, so
# together with the pid it names one process for good.
bl_starttime() {
  sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $20 }'
}

# bl_register PID: remember it, so cleanup can stop it and never signals an
# unrelated process that got the pid later.
bl_register() {
  local st
  st=$(bl_starttime "$1") || return 0
  [[ -n $st ]] && BL_PIDS+=("$1:$st")
}

# bl_ours PID: PID is a process we registered, still the same one.
bl_ours() {
  local entry
  for entry in "${BL_PIDS[@]}"; do
    [[ ${entry%%:*} == "$1" && "$(bl_starttime "$1")" == "${entry#*:}" ]] && return 0
  done
  return 1
}

# bl_stop PID [WAIT_S]: SIGTERM one of our processes, SIGKILL it after WAIT_S.
bl_stop() {
  local pid=$1 wait_s=${2:-10} i
  bl_alive "$pid" || { wait "$pid" 2>/dev/null; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < wait_s * 10; i++)); do
    bl_alive "$pid" || break
    sleep 0.1
  done
  if bl_alive "$pid"; then
    bl_log "pid $pid did not stop on SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
  fi
  wait "$pid" 2>/dev/null || true
}

# bl_stop_registered PID [WAIT_S]: bl_stop if PID is still the process we started.
bl_stop_registered() {
  if bl_ours "$1"; then
    bl_stop "$1" "${2:-10}"
  else
    wait "$1" 2>/dev/null || true
  fi
}

# bl_clean_dpdk: hugepage map files and runtime dirs of our prefixes (only
# files no process has open: a live process keeps its memory).
bl_clean_dpdk() {
  local p f
  for p in "${BL_PREFIXES[@]}"; do
    for f in /dev/hugepages/"${p}"map_* /dev/hugepages/"${p}"_*; do
      [[ -e $f ]] || continue
      fuser -s "$f" 2>/dev/null && continue
      rm -f "$f"
    done
    rm -rf "/var/run/dpdk/$p"
  done
}

bl_cleanup() {
  local status=$? entry pid fd hook
  set +e
  trap - EXIT INT TERM
  for fd in "${BL_FDS[@]}"; do
    eval "exec $fd>&-" 2>/dev/null
  done
  # Newest first: frontends before backends, ovs-vswitchd before ovsdb-server.
  for ((i = ${#BL_PIDS[@]} - 1; i >= 0; i--)); do
    entry=${BL_PIDS[i]}
    pid=${entry%%:*}
    [[ "$(bl_starttime "$pid")" == "${entry#*:}" ]] && bl_stop "$pid" 5
  done
  for hook in "${BL_CLEANUP_HOOKS[@]}"; do
    "$hook"
  done
  bl_clean_dpdk
  # The lock file stays: removing it would let a newcomer lock a new file while
  # a waiter (BL_LOCK_WAIT) locks the old one. The lock itself goes with our fd.
  if [[ -n $BL_WORK && -d $BL_WORK ]]; then
    if [[ $status -ne 0 || ${KEEP_WORK:-0} == 1 ]]; then
      # Keep what explains the run (logs, reports, configs); drop sockets, fifos, the
      # OVS database and pid files.
      find "$BL_WORK" \( -type s -o -type p -o -name '*.db' -o -name '*.pid' -o -name '*.ctl' \) \
        -delete 2>/dev/null
      echo "$BL_NAME: logs kept in $BL_WORK" >&2
    else
      rm -rf "$BL_WORK"
    fi
  fi
  exit "$status"
}

bl_install_traps() {
  trap bl_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# bl_lock FILE: one benchmark at a time (they would share DPDK prefixes and cores).
# BL_LOCK_WAIT=S waits up to S seconds for the other one to finish.
bl_lock() {
  exec {BL_LOCK_FD}>"$1"
  if [[ ${BL_LOCK_WAIT:-0} -gt 0 ]] && ! flock -n "$BL_LOCK_FD"; then
    bl_log "another benchmark holds $1: waiting up to ${BL_LOCK_WAIT}s"
  fi
  flock -w "${BL_LOCK_WAIT:-0}" "$BL_LOCK_FD" || bl_die "another benchmark is running (it holds $1)"
  # shellcheck disable=SC2034 # for the scripts that source this
  BL_LOCK_FILE=$1
}

# bl_install PACKAGE...: apt-get install what is not installed yet. Services are
# kept from starting (a policy-rc.d that says no, only for the install) so that
# installing Open vSwitch leaves no daemon running.
bl_install() {
  local missing=() p added_policy=0
  for p in "$@"; do
    [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" == "install ok installed" ]] ||
      missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  bl_log "installing ${missing[*]}"
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    added_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  local rc=$?
  ((added_policy)) && rm -f /usr/sbin/policy-rc.d
  ((rc == 0)) || bl_die "apt-get install ${missing[*]} failed"
}

# bl_wait_for SECONDS DESCRIPTION COMMAND...: retry COMMAND every 0.2 s.
bl_wait_for() {
  local t=$1 what=$2 i
  shift 2
  for ((i = 0; i < t * 5; i++)); do
    "$@" && return 0
    sleep 0.2
  done
  bl_log "timed out after ${t}s waiting for $what"
  return 1
}

# ---------------------------------------------------------------- testpmd

# bl_tp_start NAME LOG ARGS...: dpdk-testpmd at its interactive prompt, fed from
# a fifo. Sets TP_PID and TP_FD (our write end of its stdin).
bl_tp_start() {
  local name=$1 logf=$2 fifo=$BL_WORK/$1.in
  shift 2
  rm -f "$fifo"
  mkfifo "$fifo"
  # Read-write open never blocks, and keeps testpmd's stdin open until we close it.
  exec {TP_FD}<>"$fifo"
  BL_FDS+=("$TP_FD")
  stdbuf -oL dpdk-testpmd "$@" <"$fifo" >"$logf" 2>&1 &
  TP_PID=$!
  bl_register "$TP_PID"
  if ! bl_wait_for 60 "testpmd $name's prompt" bl_tp_prompt "$TP_PID" "$logf"; then
    tail -n 20 "$logf" >&2
    return 1
  fi
}

bl_tp_prompt() { bl_alive "$1" && grep -qF "testpmd> " "$2"; }

# bl_tp_cmd FD LOG COMMAND [TIMEOUT_S]: type COMMAND and wait for the next
# prompt. Sets CMD_OFF to where its output starts in LOG.
CMD_OFF=0
bl_tp_cmd() {
  local fd=$1 logf=$2 cmd=$3 t=${4:-20} i
  CMD_OFF=$(stat -c %s "$logf")
  echo "$cmd" >&"$fd"
  for ((i = 0; i < t * 10; i++)); do
    tail -c "+$((CMD_OFF + 1))" "$logf" | grep -qF "testpmd> " && return 0
    sleep 0.1
  done
  bl_log "testpmd did not finish '$cmd' within ${t}s ($logf)"
  return 1
}

# bl_tp_quit PID FD: `quit`, then SIGTERM if it does not exit within 20 s.
bl_tp_quit() {
  local pid=$1 fd=$2 i
  # shellcheck disable=SC2261 # stdout to the fifo, errors (testpmd gone) nowhere
  echo quit >&"$fd" 2>/dev/null
  for ((i = 0; i < 200; i++)); do
    bl_alive "$pid" || break
    sleep 0.1
  done
  bl_stop "$pid" 5
  eval "exec $fd>&-" 2>/dev/null
}

# bl_tp_port_stat LOG OFFSET PORT FIELD: FIELD (RX-packets, RX-bytes, ...) of
# PORT in the `show port stats all` output after OFFSET.
bl_tp_port_stat() {
  tail -c "+$(($2 + 1))" "$1" | awk -v p="$3" -v f="$4:" '
    /NIC statistics for port/ { inb = ($0 ~ ("for port " p " ")); next }
    /^ *#+ *$/ { inb = 0 }
    inb { for (i = 1; i < NF; i++) if ($i == f) { print $(i + 1); exit } }'
}

# ---------------------------------------------------------------- Open vSwitch

BL_OVS_VSWITCHD=/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk
BL_OVS_DIR="" BL_OVS_PID="" BL_OVSDB_PID=""
# dpdkvhostuser: OVS listens on DIR/vhost0 and DIR/vhost1 (the frontend connects).
# dpdkvhostuserclient: the frontend listens there and OVS connects, retrying
# until it does; with userspace-tso-enable only these ports get TSO (OVS 3.1
# gives DPDK external buffers only to client ports, and DPDK turns host TSO off
# on ports with linear buffers and no external ones).
BL_OVS_PORT_TYPE=dpdkvhostuser

# bl_ovs_start DIR CORE PREFIX [KEY=VALUE...]: ovsdb-server and ovs-vswitchd
# (DPDK) with database, run dir, logs and sockets in DIR, the PMD thread on
# CORE, DPDK file prefix PREFIX; a netdev bridge br0 with dpdkvhostuser ports
# vhost0 (ofport 1, socket DIR/vhost0) and vhost1 (ofport 2, DIR/vhost1) of type
# $BL_OVS_PORT_TYPE and the
# flows 1 -> 2 and 2 -> 1. KEY=VALUE: more other_config settings (e.g.
# userspace-tso-enable=true), made before ovs-vswitchd starts. Sets BL_OVS_PID
# (ovs-vswitchd) and BL_OVSDB_PID; the commands are noted under "ovs".
bl_ovs_start() {
  local d=$1 core=$2 prefix=$3 kv extra=()
  shift 3
  for kv in "$@"; do extra+=("other_config:$kv"); done
  BL_OVS_DIR=$d
  mkdir -p "$d"
  export OVS_RUNDIR=$d OVS_LOGDIR=$d OVS_DBDIR=$d OVS_SYSCONFDIR=$d OVS_PKGDATADIR=/usr/share/openvswitch
  rm -f "$d/conf.db" "$d/vhost0" "$d/vhost1"
  bl_note ovs "export OVS_RUNDIR=$d OVS_LOGDIR=$d OVS_DBDIR=$d OVS_SYSCONFDIR=$d"
  bl_note ovs "ovsdb-tool create $d/conf.db /usr/share/openvswitch/vswitch.ovsschema"
  bl_note ovs "ovsdb-server $d/conf.db --remote=punix:$d/db.sock --unixctl=$d/ovsdb-server.ctl --pidfile=$d/ovsdb-server.pid --log-file=$d/ovsdb-server.log &"
  ovsdb-tool create "$d/conf.db" /usr/share/openvswitch/vswitch.ovsschema
  ovsdb-server "$d/conf.db" --remote="punix:$d/db.sock" --unixctl="$d/ovsdb-server.ctl" \
    --pidfile="$d/ovsdb-server.pid" --log-file="$d/ovsdb-server.log" 2>>"$d/ovsdb-server.err" &
  BL_OVSDB_PID=$!
  bl_register "$BL_OVSDB_PID"
  bl_wait_for 10 "ovsdb-server" test -S "$d/db.sock" || return 1
  bl_ovs_vsctl --no-wait init
  bl_ovs_vsctl --no-wait set Open_vSwitch . other_config:dpdk-init=true \
    other_config:dpdk-lcore-mask=0x1 "other_config:pmd-cpu-mask=$((1 << core))" \
    other_config:dpdk-socket-mem=512 \
    "other_config:dpdk-extra=--single-file-segments --file-prefix=$prefix --no-pci" "${extra[@]}"
  bl_note ovs "$BL_OVS_VSWITCHD unix:$d/db.sock --unixctl=$d/vswitchd.ctl --pidfile=$d/vswitchd.pid --log-file=$d/vswitchd.log &"
  "$BL_OVS_VSWITCHD" "unix:$d/db.sock" --unixctl="$d/vswitchd.ctl" --pidfile="$d/vswitchd.pid" \
    --log-file="$d/vswitchd.log" 2>>"$d/vswitchd.err" &
  BL_OVS_PID=$!
  bl_register "$BL_OVS_PID"
  bl_wait_for 60 "ovs-vswitchd" test -S "$d/vswitchd.ctl" || return 1
  bl_ovs_vsctl add-br br0 -- set bridge br0 datapath_type=netdev
  local i opt=()
  for i in 0 1; do
    [[ $BL_OVS_PORT_TYPE == dpdkvhostuserclient ]] && opt=("options:vhost-server-path=$d/vhost$i")
    bl_ovs_vsctl add-port br0 "vhost$i" -- set Interface "vhost$i" "type=$BL_OVS_PORT_TYPE" \
      "ofport_request=$((i + 1))" "${opt[@]}"
  done
  bl_ovs_ofctl del-flows br0
  bl_ovs_ofctl add-flow br0 in_port=1,actions=output:2
  bl_ovs_ofctl add-flow br0 in_port=2,actions=output:1
  [[ $BL_OVS_PORT_TYPE != dpdkvhostuser ]] ||
    bl_wait_for 30 "OVS vhost-user sockets" test -S "$d/vhost1" || return 1
}

# bl_ovs_stop: stop what bl_ovs_start started.
bl_ovs_stop() {
  [[ -n $BL_OVS_PID ]] && bl_stop_registered "$BL_OVS_PID" 15
  [[ -n $BL_OVSDB_PID ]] && bl_stop_registered "$BL_OVSDB_PID" 5
  BL_OVS_PID="" BL_OVSDB_PID=""
  unset OVS_RUNDIR OVS_LOGDIR OVS_DBDIR OVS_SYSCONFDIR OVS_PKGDATADIR
}

bl_ovs_vsctl() {
  bl_note ovs "ovs-vsctl --db=unix:$BL_OVS_DIR/db.sock $(printf '%q ' "$@")"
  ovs-vsctl --db="unix:$BL_OVS_DIR/db.sock" --timeout=60 "$@"
}
bl_ovs_ofctl() {
  bl_note ovs "ovs-ofctl $*"
  ovs-ofctl "$@"
}
bl_ovs_appctl() { ovs-appctl -t "$BL_OVS_DIR/vswitchd.ctl" "$@"; }

# ---------------------------------------------------------------- the binaries

# bl_binaries: VPMD and VPMD_BENCH, by default those in $REPO/target/release.
bl_binaries() {
  [[ -n ${VPMD:-}${VPMD_BENCH:-} ]] && VPMD_FROM_ENV=1
  VPMD=${VPMD:-$REPO/target/release/vpmd}
  VPMD_BENCH=${VPMD_BENCH:-$REPO/target/release/vpmd-bench}
}

# bl_build: build them (release) unless BUILD=0 or they were given; then they
# must be there.
bl_build() {
  if ((BUILD)) && [[ -z ${VPMD_FROM_ENV:-} ]]; then
    bl_log "building vpmd and vpmd-bench (release)"
    # The tree may be mid-edit by others: a failed build keeps the binaries there are.
    (cd "$REPO" && cargo build --release --quiet -p vpmd -p vpmd-bench) ||
      bl_log "WARNING: cargo build failed; using the existing binaries in target/release"
  fi
  [[ -x $VPMD ]] || bl_die "vpmd binary $VPMD missing"
  [[ -x $VPMD_BENCH ]] || bl_die "vpmd-bench binary $VPMD_BENCH missing"
}

# ---------------------------------------------------------------- the report

# bl_work_dir NAME: one benchmark at a time (the lock), in a new work dir
# /tmp/vpmd-NAME.XXXXXX: BL_WORK, also W.
bl_work_dir() {
  bl_lock /run/vpmd-bench-compare.lock
  BL_WORK=$(mktemp -d "/tmp/vpmd-$1.XXXXXX")
  # shellcheck disable=SC2034 # the short name the scripts use
  W=$BL_WORK
}

# bl_note KEY TEXT: record an exact command for the report, a line of
# $BL_WORK/cmd.KEY (only until bl_noted KEY: the first round's).
declare -A BL_NOTED
bl_note() {
  [[ -n ${BL_NOTED[$1]:-} ]] && return 0
  printf '%s\n' "$2" >>"$BL_WORK/cmd.$1"
}
# bl_noted KEY...: what those commands are is on record.
bl_noted() {
  local k
  for k in "$@"; do BL_NOTED[$k]=1; done
}
# bl_cmds_json KEY...: the recorded commands as {"KEY": [line, ...], ...}.
bl_cmds_json() {
  local k
  for k in "$@"; do
    jq -n --arg k "$k" --rawfile v <(cat "$BL_WORK/cmd.$k" 2>/dev/null) '{($k): ($v | rtrimstr("\n") | split("\n"))}'
  done | jq -s add
}

# ---------------------------------------------------------------- facts

# bl_rss_kib_excluding_guest PID: resident KiB of PID's mappings other than
# guest memory (memfd or hugetlbfs mappings a frontend shared with it).
bl_rss_kib_excluding_guest() {
  awk '
    /^[0-9a-f]+-[0-9a-f]+ / { guest = ($0 ~ /memfd:|\/dev\/hugepages|hugetlb|anon_hugepage|rtemap|map_[0-9]/); next }
    /^Rss:/ { if (!guest) sum += $2 }
    END { print sum + 0 }' "/proc/$1/smaps" 2>/dev/null
}

# bl_busiest_thread PID: the thread of PID that used the most CPU (the polling one).
bl_busiest_thread() {
  local t best="" max=-1 v
  for t in /proc/"$1"/task/*; do
    v=$(awk '{print $14 + $15}' "$t/stat" 2>/dev/null) || continue
    ((v > max)) && { max=$v; best=${t##*/}; }
  done
  echo "$best"
}

# bl_perf_works: hardware counters are available (not in most VMs).
bl_perf_works() {
  command -v perf >/dev/null || return 1
  perf stat -x, -e instructions true 2>&1 >/dev/null | grep -q '^[0-9]'
}

bl_machine_json() {
  local cpu cores kernel
  cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
  cores=$(nproc)
  kernel=$(uname -r)
  jq -n --arg cpu "$cpu" --argjson cores "$cores" --arg kernel "$kernel" \
    --arg os "$(. /etc/os-release && echo "$PRETTY_NAME")" \
    --arg dpdk "$(dpkg-query -W -f='${Version}' dpdk 2>/dev/null)" \
    --arg ovs "$(dpkg-query -W -f='${Version}' openvswitch-switch-dpdk 2>/dev/null)" \
    '{cpu: $cpu, cores: $cores, kernel: $kernel, os: $os, dpdk: $dpdk, ovs: $ovs}'
}

# bl_load_snapshot: load average and the processes (not ours) using the most CPU
# right now (top over one second).
bl_load_snapshot() {
  local mine="" e
  for e in "${BL_PIDS[@]}"; do mine+=" ${e%%:*}"; done
  jq -n --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" \
    --arg top "$(top -b -n 2 -d 1 -w 200 2>/dev/null | awk -v mine="$mine" '
        BEGIN { n = split(mine, m, " "); for (i = 1; i <= n; i++) ours[m[i]] = 1 }
        /^top -/ { iter++ }
        iter == 2 && $1 ~ /^[0-9]+$/ && !($1 in ours) && $9 + 0 >= 5 { printf "%s %s%%; ", $12, $9 }' |
      head -c 300)" \
    '{loadavg: $load, others_busy: $top}'
}
