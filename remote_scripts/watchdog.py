#!/usr/bin/env python3
"""A worker's watchdog (trainer/training/peers.py starts it beside the trainer of a multi-worker training).

    python3 watchdog.py PID SECONDS STATUS_PATH MESSAGE LONG_SECONDS   < the trainer's beats

Each line on stdin is a beat: the deadline is SECONDS from now again (a line with text also makes it the message
a timeout records). "\\x00long" sets the deadline LONG_SECONDS from now, "\\x00pause" lifts it until the next beat,
and the end of stdin (the trainer closed the pipe, or ended) ends the watchdog. Past the deadline it prints
"PeerLost: MESSAGE", records it as the run's failure in STATUS_PATH (status.json, written atomically) and kills
PID with SIGKILL: peers.py says why nothing inside the trainer's process could.

Standard library only: it runs with the trainer's python, beside the trainer, and imports only run_format.py.
"""

import json
import os
import select
import signal
import sys
import time

from run_format import write_json


def wait_for_the_deadline(fd, seconds, long_seconds, message):
    """Read beats from `fd` until the deadline passes: the message a timeout records then, or None when the pipe
    closed first."""
    pending = b""
    deadline = time.monotonic() + seconds
    while True:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not select.select([fd], [], [], wait)[0]:
            return message
        data = os.read(fd, 65536)
        if not data:
            return None  # the pipe closed: the trainer is past what is watched (or ended)
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            if line == b"\x00pause":
                deadline = None
            elif line == b"\x00long":
                deadline = time.monotonic() + long_seconds
            else:
                deadline = time.monotonic() + seconds
                if line:
                    message = line.decode(errors="replace")


def record_peer_lost(status_path, message):
    """status.json says the run failed: PeerLost, `message`."""
    with open(status_path) as f:
        status = json.load(f)
    status.update(state="failed", error={"type": "PeerLost", "message": message, "cause": "timeout", "local": False},
                  updated_at=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()))
    write_json(status_path, status)


def main(argv):
    pid, seconds, status_path, message, long_seconds = int(argv[0]), float(argv[1]), argv[2], argv[3], float(argv[4])
    message = wait_for_the_deadline(sys.stdin.fileno(), seconds, long_seconds, message)
    if message is None:
        return 0
    print("PeerLost: " + message, flush=True)
    try:
        record_peer_lost(status_path, message)
    finally:
        os.kill(pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
