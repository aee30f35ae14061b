"""The command a real OpenSSH server runs for every session (its `ForceCommand`): hands
`$SSH_ORIGINAL_COMMAND` to a running simulator over a unix socket and plays its answer back
as the appliance-side process would: stdout, stderr, then its exit status, or its death by a
signal (the reply cut short), or the death of the per-connection sshd (the connection drops).

Run as `python3 -I relay.py SOCKET`. Standard library only: it starts once per command.
The frames are JSON lines: `{"line": ...}` in; `{"out": text}`, `{"err": text}`, then one of
`{"exit": status}`, `{"kill": "KILL"}` or `{"drop": true}` back (`rdscsi.sim.relay_server`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys


def _write(fd: int, text: str) -> None:
    data = text.encode("utf-8")
    while data:
        data = data[os.write(fd, data) :]


def main(argv: list[str]) -> int:
    line = os.environ.get("SSH_ORIGINAL_COMMAND")
    if line is None:
        _write(2, "rdscsi relay: commands only (no interactive console)\n")
        return 1
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(argv[1])
    except (OSError, IndexError) as exc:
        _write(2, f"rdscsi relay: no simulator at {argv[1:]}: {exc}\n")
        return 255
    sock.sendall(json.dumps({"line": line}).encode() + b"\n")
    for raw in sock.makefile("rb"):
        frame = json.loads(raw)
        if "out" in frame:
            _write(1, frame["out"])
        elif "err" in frame:
            _write(2, frame["err"])
        elif "exit" in frame:
            return int(frame["exit"])
        elif "kill" in frame:
            os.kill(os.getpid(), getattr(signal, "SIG" + str(frame["kill"])))
        elif "drop" in frame:
            os.kill(os.getppid(), signal.SIGKILL)  # the per-connection sshd: the link drops
            return 255
    return 255  # the simulator went away before the answer ended


if __name__ == "__main__":
    sys.exit(main(sys.argv))
