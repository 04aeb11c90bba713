"""How a worker of a multi-worker training learns that a peer is gone: a watchdog for a peer that
never answers, and the errors a collective raises when one died.

    with Watchdog(300, status_path, "the workers did not all join within 300 s ...") as watch:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()   # watched: 300 s from now
        watch.expect("no step ended for 300 s ...")   # another message, 300 s from now
        ... watch.beat()                              # after each step: 300 s from now again
        watch.pause()                                 # this worker's own work (saving): no deadline until the next beat
    lost_peer(error, workers=2)                       # the error of a collective whose peer died

Past the deadline the watchdog records its message as the run's failure (PeerLost) in status.json
and kills this process (SIGKILL; the launcher records exit code 137): a worker waiting for a peer
waits inside TensorFlow's C++, holding the GIL while it joins the cluster, with SIGTERM taken by
TensorFlow's preemption notifier, so no thread, exception or signal handler of this process would
run. One timer reset by every step replaces TensorFlow's per-collective timeout, which starts a
thread per collective that sleeps out the whole timeout: thousands of threads an epoch.
"""

import os
import subprocess
import sys

WATCHDOG = r"""
import json, os, select, signal, sys, time
pid, seconds, status_path, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
fd, pending = sys.stdin.fileno(), b""
deadline = time.monotonic() + seconds
while True:
    wait = None if deadline is None else max(0.0, deadline - time.monotonic())
    if not select.select([fd], [], [], wait)[0]:
        break
    data = os.read(fd, 65536)
    if not data:
        sys.exit(0)  # the pipe closed: the trainer is past what is watched (or ended)
    *lines, pending = (pending + data).split(b"\n")
    for line in lines:
        deadline = None if line == b"\x00pause" else time.monotonic() + seconds
        if line and line != b"\x00pause":
            message = line.decode(errors="replace")
print("PeerLost: " + message, flush=True)
try:
    with open(status_path) as f:
        status = json.load(f)
    status.update(state="failed", error={"type": "PeerLost", "message": message},
                  updated_at=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()))
    tmp = status_path + ".watchdog.tmp"
    with open(tmp, "w") as f:
        json.dump(status, f, indent=1)
    os.replace(tmp, status_path)
finally:
    os.kill(pid, signal.SIGKILL)
"""


class Watchdog:
    """A process that kills this one `seconds` after the last beat, recording `message` (see above)."""

    def __init__(self, seconds, status_path, message):
        self.seconds = seconds
        self.proc = subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()), str(seconds), str(status_path),
                                      _one_line(message)], stdin=subprocess.PIPE)

    def beat(self):
        self._send(b"\n")

    def pause(self):
        self._send(b"\x00pause\n")

    def expect(self, message):
        """From now on, `message` is what a timeout records; the deadline restarts."""
        self._send(_one_line(message).encode() + b"\n")

    def close(self):
        if self.proc.stdin.closed:
            return
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _send(self, data):
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):  # the watchdog is gone (or closed): nothing left to tell
            pass


class NoWatchdog:
    """One host: no peer to wait for."""

    def beat(self):
        pass

    def pause(self):
        pass

    def close(self):
        pass


def _one_line(message):
    return " ".join(str(message).split()).replace("\x00", "")


def lost_peer(error, workers):
    """Whether `error`, raised by a step or a collective, means that a peer is gone: unavailable, timed
    out, cancelled or aborted; with several workers also NCCL's InternalError/UnknownError, which is
    what a lost peer raises on GPUs."""
    import tensorflow as tf

    if isinstance(error, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
                          tf.errors.AbortedError)):
        return True
    return workers > 1 and isinstance(error, (tf.errors.InternalError, tf.errors.UnknownError))
