# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""One human-monitor command to a QEMU started with run-qemu.sh --monitor PATH.

Usage: python3 scripts/guest/hmp.py PATH COMMAND

Prints the command's answer (without the banner, the prompts, the echo of the
command and terminal codes) once the monitor shows its next prompt, or when
QEMU closes the connection (`quit`). Exit status 1 if the monitor cannot be
reached or does not answer within 10 s.
"""
import re
import socket
import sys

path, cmd = sys.argv[1], sys.argv[2]
PROMPT = b"(qemu) "


def until_prompt(sock, buf=b""):
    while PROMPT not in buf:
        data = sock.recv(65536)
        if not data:
            break
        buf += data
    return buf


try:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)
    sock.connect(path)
    until_prompt(sock)  # the banner and the first prompt
    sock.sendall(cmd.encode() + b"\n")
    out = until_prompt(sock).decode(errors="replace").replace("\r", "")
except OSError as e:
    print(f"hmp.py: {path}: {e}", file=sys.stderr)
    sys.exit(1)
out = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", out)
# The first line is the monitor's echo of the command (redrawn per character).
lines = out.split("\n")[1:]
print("\n".join(l for l in lines if l.strip() and not l.startswith("(qemu)")))
