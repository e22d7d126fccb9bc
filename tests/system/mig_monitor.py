# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Drives one outgoing live migration on a QEMU human monitor for
tests/system/migration_macvlan.sh, holding it in its iterations on request.

Usage: python3 mig_monitor.py MONITOR URI RELEASE_FILE [FIRST_BW [HOLD_BW]]

Starts `migrate -d URI` (downtime limit 1 ms, max-bandwidth FIRST_BW, default
50M: the first pass takes a few seconds, so its end is seen) and polls `info
migrate` every 20 ms. Once the first pass over all memory is done (dirty sync
count 2) and the migration still runs, it holds it: max-bandwidth HOLD_BW
(default 2M; "none": never hold) and a 1 ms downtime limit: it completes only after a sync that
finds no page dirty, which a running guest does not allow; it prints "held
MS". When
RELEASE_FILE exists it lets it go (max-bandwidth 1G, downtime limit 300 ms)
and prints "released MS". While held, it prints "quiet MS remaining_kb=N" once
QEMU has sent nearly all it knows to be dirty (at most 64 KiB remain: the
guest has quietened), or "quiet-timeout ..." if that does not happen in 10 s.
Output lines (MS: since `migrate`):
    held MS | quiet MS remaining_kb=N | quiet-timeout MS remaining_kb=N | released MS
    completed MS held=0|1 total_ms=N downtime_ms=N syncs=N transferred_kb=N
    refused TEXT | failed TEXT | timeout TEXT
Exit status 0 only for "completed".
"""
import os
import re
import socket
import sys
import time

mon, uri, release = sys.argv[1:4]
first_bw = sys.argv[4] if len(sys.argv) > 4 else "50M"
hold_bw = sys.argv[5] if len(sys.argv) > 5 else "2M"
PROMPT = b"(qemu) "
TIMEOUT_S = 120


class Monitor:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self._until_prompt()

    def _until_prompt(self):
        buf = b""
        while PROMPT not in buf:
            data = self.sock.recv(65536)
            if not data:
                break
            buf += data
        return buf

    def cmd(self, line):
        self.sock.sendall(line.encode() + b"\n")
        out = self._until_prompt().decode(errors="replace").replace("\r", "")
        out = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", out)
        lines = out.split("\n")[1:]  # the first is the echo of the command
        return "\n".join(l for l in lines if l.strip() and not l.startswith("(qemu)"))


def field(text, name):
    m = re.search(rf"^{re.escape(name)}: *(\S+)", text, re.M)
    return m.group(1) if m else ""


def say(text):
    print(text, flush=True)


m = Monitor(mon)
m.cmd("migrate_set_parameter downtime-limit 1")
m.cmd(f"migrate_set_parameter max-bandwidth {first_bw}")
t0 = time.monotonic()
ms = lambda: int((time.monotonic() - t0) * 1000)  # noqa: E731
answer = m.cmd(f"migrate -d {uri}")
if re.search(r"error|disabled", answer, re.I):
    say("refused " + answer.replace("\n", " "))
    sys.exit(2)
held = released = quiet = False
held_at = 0.0
while True:
    info = m.cmd("info migrate")
    status = field(info, "Migration status")
    syncs = int(field(info, "dirty sync count") or 0)
    if status == "completed":
        say(f"completed {ms()} held={int(held)} total_ms={field(info, 'total time')} "
            f"downtime_ms={field(info, 'downtime')} syncs={syncs} "
            f"transferred_kb={field(info, 'transferred ram')}")
        sys.exit(0)
    if status in ("failed", "cancelled"):
        say(f"failed {status}: " + info.replace("\n", " "))
        sys.exit(1)
    if time.monotonic() - t0 > TIMEOUT_S:
        say(f"timeout after {TIMEOUT_S} s, status {status}: " + info.replace("\n", " "))
        sys.exit(1)
    if status == "active" and syncs >= 2 and not held and hold_bw != "none":
        m.cmd(f"migrate_set_parameter max-bandwidth {hold_bw}")
        held, held_at = True, time.monotonic()
        say(f"held {ms()}")
    if held and not quiet and not released:
        remaining = int(field(info, "remaining ram") or -1)
        if 0 <= remaining <= 64:
            quiet = True
            say(f"quiet {ms()} remaining_kb={remaining}")
        elif time.monotonic() - held_at > 10:
            quiet = True
            say(f"quiet-timeout {ms()} remaining_kb={remaining}")
    if held and not released and os.path.exists(release):
        m.cmd("migrate_set_parameter max-bandwidth 1G")
        m.cmd("migrate_set_parameter downtime-limit 300")
        released = True
        say(f"released {ms()}")
    time.sleep(0.02)
