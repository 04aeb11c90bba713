"""How a worker of a multi-worker training learns that a peer is gone: a watchdog for a peer that
never answers, and the errors a collective raises when one died.

    with Watchdog(300, status_path, "the workers did not all join within 300 s ...") as watch:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()   # watched: 300 s from now
        watch.expect("no step ended for 300 s ...")   # another message, 300 s from now
        ... watch.beat()                              # after each step: 300 s from now again
        watch.pause()                                 # this worker's own work (saving): no deadline until the next beat
        watch.long_wait()                             # a first call, or a wait for the chief's epoch end: long_seconds
    lost_peer(error, workers=2)                       # the error of a collective whose peer died

Past the deadline the watchdog records its message as the run's failure (PeerLost) in status.json
and kills this process (SIGKILL; the launcher records exit code 137): a worker waiting for a peer
waits inside TensorFlow's C++, holding the GIL while it joins the cluster, with SIGTERM taken by
TensorFlow's preemption notifier, so no thread, exception or signal handler of this process would
run: the watchdog is a process of its own (remote_scripts/watchdog.py). One timer reset by every step
replaces TensorFlow's per-collective timeout, which starts a thread per collective that sleeps out the
whole timeout: thousands of threads an epoch.

The deadline is per call of K training steps (train.steps_per_execution), not per step. Three waits
get `long_allowance(seconds)` = max(4 x seconds, 600 s) instead, on every worker, and a peer that
freezes during one is detected within it:
- the first call of a newly traced function, which also optimises its graph and runs it for the
  first time: that grows with K (53 s, and in another run about 5 min, at K=24 on a loaded 2-core host, against 0.9 s for a later
  call at K=16); each worker traces its own functions;
- the set-up, from the cluster's join to the first call: each worker loads its data (as slow as
  its host's disk) and builds the model, whose variables wait for the chief's initial values;
- a worker's wait for the chief at the start (its backup restored) and at each epoch's end (its
  checkpoints, backup and pictures written): the chief's own work, which only the chief's
  watchdog is paused for.
"""

import os
import re
import subprocess
import sys

from trainer.run_format import SCRIPTS

WATCHDOG = SCRIPTS / "watchdog.py"  # the watchdog process: standard library only, beside the trainer


def long_allowance(seconds):
    """The deadline of a newly traced function's first call (its graph optimisation and first run)."""
    return max(4 * seconds, 600)


class Watchdog:
    """A process that kills this one `seconds` after the last beat, recording `message` (see above);
    `long_seconds` after a `long_wait()` (default: long_allowance(seconds))."""

    def __init__(self, seconds, status_path, message, long_seconds=None):
        self.seconds = seconds
        self.long_seconds = long_allowance(seconds) if long_seconds is None else long_seconds
        self.proc = subprocess.Popen([sys.executable, str(WATCHDOG), str(os.getpid()), str(seconds), str(status_path),
                                      _one_line(message), str(self.long_seconds)], stdin=subprocess.PIPE)

    def beat(self):
        self._send(b"\n")

    def long_wait(self):
        """A newly traced function's first call, or a wait for the chief's own work: the longer allowance."""
        self._send(b"\x00long\n")

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

    def long_wait(self):
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
    return workers > 1 and local_failure(error)


def local_failure(error):
    """Whether `error` is a failure of this worker's own collective library (NCCL's InternalError or
    UnknownError), as opposed to the signal that a peer is gone (unavailable, cancelled, ...): the
    cluster's verdict (deploy/host/cluster.py) blames the worker whose own collective failed."""
    import tensorflow as tf

    return isinstance(error, (tf.errors.InternalError, tf.errors.UnknownError))


def peer_hint(error, own):
    """The peers TensorFlow's message names, this worker (`own`) left out: for the reader (the records of the
    workers are the facts). A heartbeat's timeout names the task that reports it."""
    found = sorted({int(k) for k in re.findall(r"/job:worker/replica:\d+/task:(\d+)", str(error))} - {own})
    return "worker " + " and ".join(map(str, found)) if found else "its peers"
