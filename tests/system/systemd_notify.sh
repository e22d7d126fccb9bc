#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# systemd integration (issue 14): configs/vpmd.service and the readiness protocol.
#
#  1. configs/vpmd.service has Type=notify, the documented ExecStart, ExecReload,
#     RuntimeDirectory=vpmd, Restart=on-failure and exactly the README's start-up
#     capabilities; `systemd-analyze verify` accepts it with no warning at all. Its
#     ExecStart binary must exist for verify, so a copy of the unit is verified with
#     /usr/local/bin/vpmd replaced by the binary under test and /etc/vpmd/vpmd.toml by
#     configs/vpmd.toml (the lines are otherwise the same).
#  2. vpmd given a NOTIFY_SOCKET (a datagram socket a python3 listener holds): it
#     sends READY=1 (with MAINPID = its pid), and at the moment the listener reads
#     it every configured port socket and the control socket exist as sockets;
#     SIGTERM then brings STOPPING=1 and a clean exit.
#  3. The same with an abstract NOTIFY_SOCKET (@name).
#  4. Without NOTIFY_SOCKET vpmd sends nothing and runs as before; with one that
#     nobody listens on it warns and still runs.
#
# Usage (from the repo root, as root): bash tests/system/systemd_notify.sh
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ -x $VPMD ]] || fail "vpmd binary $VPMD missing (cargo build --release)"
command -v python3 >/dev/null || fail "python3 missing"
if ! command -v systemd-analyze >/dev/null; then
  [[ $(id -u) -eq 0 ]] || fail "systemd-analyze missing (package systemd) and not root to install it"
  "$REPO/scripts/install-deps.sh" >/dev/null || fail "install-deps.sh failed"
fi
UNIT=$REPO/configs/vpmd.service

# ------------------------------------------------------------ 1. the unit
want_line() {
  grep -qxF -- "$1" "$UNIT" || fail "configs/vpmd.service has no line '$1'"
}
want_line "Type=notify"
want_line "ExecStart=/usr/local/bin/vpmd run --config /etc/vpmd/vpmd.toml"
want_line 'ExecReload=/bin/kill -HUP $MAINPID'
want_line "RuntimeDirectory=vpmd"
want_line "Restart=on-failure"
# The README's table of what start-up needs, less what RuntimeDirectory= makes
# unnecessary (CAP_DAC_OVERRIDE) and what vpmd does not use (CAP_SYS_NICE).
CAPS="CAP_NET_ADMIN CAP_BPF CAP_NET_RAW CAP_IPC_LOCK CAP_CHOWN CAP_SETPCAP"
for key in CapabilityBoundingSet AmbientCapabilities; do
  got=$(sed -n "s/^$key=//p" "$UNIT" | tr ' ' '\n' | sort | tr '\n' ' ')
  want=$(tr ' ' '\n' <<<"$CAPS" | sort | tr '\n' ' ')
  [[ $got == "$want" ]] || fail "$key is '$got', want '$want'"
done
for c in $CAPS; do
  grep -q "\`$c\`" "$REPO/README.md" || fail "$c is in the unit but not in README's privileges table"
done
VERIFY=$WORK/vpmd.service
sed -e "s|/usr/local/bin/vpmd|$VPMD|g" -e "s|/etc/vpmd/vpmd.toml|$REPO/configs/vpmd.toml|g" "$UNIT" >"$VERIFY"
[[ $(grep -c "$VPMD" "$VERIFY") -ge 2 ]] || fail "substitution of the binary path failed"
out=$(systemd-analyze verify "$VERIFY" 2>&1) || fail "systemd-analyze verify failed: $out"
[[ -z $out ]] || fail "systemd-analyze verify warns: $out"
"$VPMD" run --check --config "$REPO/configs/vpmd.toml" >/dev/null || fail "configs/vpmd.toml does not check"
log "1: systemd-analyze verify accepts configs/vpmd.service (binary path substituted: $VPMD), no warnings"

# ------------------------------------------------------------ listener
cat >"$WORK/listen.py" <<'PY'
# Receives sd_notify datagrams on argv[1] (a path, or @abstract); on READY=1
# checks which of argv[2:] exist as sockets at that moment. Prints one line per
# datagram; exits after STOPPING=1 or 60 s.
import os, socket, stat, sys, time
addr = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("\0" + addr[1:] if addr.startswith("@") else addr)
print("listening", flush=True)
s.settimeout(60)
end = time.time() + 60
while time.time() < end:
    try:
        msg = s.recv(4096).decode()
    except socket.timeout:
        break
    fields = dict(l.split("=", 1) for l in msg.splitlines() if "=" in l)
    line = "got " + " ".join(f"{k}={v.replace(' ', '_')}" for k, v in fields.items())
    if fields.get("READY") == "1":
        missing = [p for p in sys.argv[2:]
                   if not (os.path.exists(p) and stat.S_ISSOCK(os.stat(p).st_mode))]
        line += " sockets=" + ("all" if not missing else "missing:" + ",".join(missing))
    print(line, flush=True)
    if fields.get("STOPPING") == "1":
        break
PY

DIR=$WORK/run
write_pairs_config "$WORK/vpmd.toml" "$DIR" 2
SOCKETS=("$DIR/p0a.sock" "$DIR/p0b.sock" "$DIR/p1a.sock" "$DIR/p1b.sock" "$CONTROL")

# run_notified NAME NOTIFY_ADDR: listener on NOTIFY_ADDR, vpmd with NOTIFY_SOCKET
# set to it; checks READY=1 (sockets all there, MAINPID right), then STOPPING=1.
run_notified() {
  local name=$1 addr=$2 lpid i
  python3 "$WORK/listen.py" "$addr" "${SOCKETS[@]}" >"$WORK/$name.notify" 2>"$WORK/$name.listen.log" &
  lpid=$!
  register_pid "$lpid" python3
  wait_for_log "$WORK/$name.notify" '^listening' 10 "$lpid" || fail "$name: listener did not start"
  for s in "${SOCKETS[@]}"; do [[ ! -e $s ]] || fail "$s exists before vpmd started"; done
  NOTIFY_SOCKET=$addr start_vpmd "$WORK/vpmd.toml"
  wait_for_log "$WORK/$name.notify" '^got .*READY=1' 10 "$lpid" || fail "$name: no READY=1"
  local ready
  ready=$(grep -m1 'READY=1' "$WORK/$name.notify")
  [[ $ready == *" sockets=all"* ]] || fail "$name: READY=1 before the sockets existed: $ready"
  [[ $ready == *" MAINPID=$VPMD_PID "* || $ready == *" MAINPID=$VPMD_PID" ]] ||
    fail "$name: READY=1 has the wrong MAINPID (vpmd is $VPMD_PID): $ready"
  [[ $(grep -c 'READY=1' "$WORK/$name.notify") -eq 1 ]] || fail "$name: READY=1 sent more than once"
  grep -aq 'told systemd: READY=1' "$VPMD_LOG" || fail "$name: vpmd did not log the notification"
  log "$name: $ready"
  stop_vpmd
  wait_for_log "$WORK/$name.notify" '^got .*STOPPING=1' 10 || fail "$name: no STOPPING=1 after SIGTERM"
  for ((i = 0; i < 50; i++)); do alive "$lpid" || break; sleep 0.1; done
  log "$name: $(grep -m1 'STOPPING=1' "$WORK/$name.notify"); vpmd exited 0"
}

# ------------------------------------------------------------ 2. path socket
run_notified path "$WORK/notify.sock"
# ------------------------------------------------------------ 3. abstract socket
run_notified abstract "@vpmd-test-notify-$$"

# ------------------------------------------------------------ 4. no manager
start_vpmd "$WORK/vpmd.toml"
! grep -aq 'told systemd' "$VPMD_LOG" || fail "vpmd notified without NOTIFY_SOCKET"
stop_vpmd
NOTIFY_SOCKET=$WORK/nobody-listens.sock start_vpmd "$WORK/vpmd.toml"
grep -aq 'cannot connect to NOTIFY_SOCKET' "$VPMD_LOG" || fail "no warning for a dead NOTIFY_SOCKET"
stop_vpmd
log "4: without NOTIFY_SOCKET nothing is sent; a dead one is a warning, vpmd still runs"
pass "unit verified; READY=1 only once every socket exists, STOPPING=1 on SIGTERM, path and abstract sockets"
