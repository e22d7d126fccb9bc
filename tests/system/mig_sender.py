# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""The outside host's side of tests/system/migration_macvlan.sh: stream random
data to HOST:PORT over TCP at RATE bytes/s (0: as fast as it goes), until the
file FINISH exists (or MAX bytes are sent), hashing what it sends.

Usage: python3 mig_sender.py HOST PORT RATE MAX FINISH PROGRESS [PAUSE]

While the file PAUSE exists, nothing is sent (and the pace starts over after).

PROGRESS is rewritten every 0.2 s with one line
    sent=N acked=N retrans=N elapsed=S state=sending|draining|done|error
(acked: the bytes the receiver acknowledged, from TCP_INFO; retrans: the
connection's retransmitted segments). The last line of stdout is
    done bytes=N sha256=HEX acked=N retrans=N elapsed=S
or  error TEXT sent=N acked=N ...
and the exit status is 0 only for "done": every byte sent was acknowledged.
"""
import hashlib
import os
import socket
import struct
import sys
import time

host, port, rate, limit, finish, progress = sys.argv[1:7]
pause = sys.argv[7] if len(sys.argv) > 7 else None
port, rate, limit = int(port), float(rate), int(limit)
CHUNK = 16384

t0 = time.monotonic()
sent = 0
digest = hashlib.sha256()


def tcp_counters(s):
    """bytes_acked and total_retrans from struct tcp_info (offsets 120, 100)."""
    try:
        info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        acked = struct.unpack_from("=Q", info, 120)[0]
        retrans = struct.unpack_from("=I", info, 100)[0]
        # The SYN and the FIN count as one acknowledged byte each.
        return min(max(acked - 1, 0), sent), retrans
    except OSError:
        return -1, -1


def line(s):
    acked, retrans = tcp_counters(s) if s else (0, 0)
    return f"sent={sent} acked={acked} retrans={retrans} elapsed={time.monotonic() - t0:.1f}"


def report(s, state):
    tmp = progress + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{line(s)} state={state}\n")
    os.replace(tmp, progress)


sock = None
try:
    # The guest's receiver may not listen yet: retry for up to 30 s.
    deadline = time.monotonic() + 30
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    # A small send buffer keeps "sent" close to what reached the guest.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
    sock.settimeout(120)  # a stall this long is a broken stream
    t0 = time.monotonic()
    last = 0.0
    base = 0  # bytes sent when the pace last started over
    while sent < limit and not os.path.exists(finish):
        if pause and os.path.exists(pause):
            report(sock, "paused")
            while os.path.exists(pause) and not os.path.exists(finish):
                time.sleep(0.02)
            t0, base = time.monotonic(), sent
            continue
        buf = os.urandom(min(CHUNK, limit - sent))
        sock.sendall(buf)
        digest.update(buf)
        sent += len(buf)
        now = time.monotonic()
        ahead = (sent - base) / rate - (now - t0) if rate > 0 else 0
        if ahead > 0:
            time.sleep(ahead)
        if now - last >= 0.2:
            report(sock, "sending")
            last = now
    # All written: close our side and wait until the receiver has acknowledged
    # every byte (the guest's busybox nc half-closes its side at once: its
    # stdin is /dev/null, so its FIN says nothing).
    sock.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + 120
    while tcp_counters(sock)[0] != sent:
        if time.monotonic() > deadline:
            raise RuntimeError("the receiver did not acknowledge everything within 120 s")
        report(sock, "draining")
        time.sleep(0.1)
    report(sock, "done")
    print(f"done bytes={sent} sha256={digest.hexdigest()} " + line(sock).split(" ", 1)[1], flush=True)
except Exception as e:  # noqa: BLE001 - any failure is the test's result
    if sock:
        report(sock, "error")
    print(f"error {type(e).__name__}: {e} " + line(sock), flush=True)
    sys.exit(1)
