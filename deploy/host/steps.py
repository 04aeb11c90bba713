"""Ctrl-C ends the remote step, not only the local wait for it.

A remote step's processes carry FACENET_STEP=<token>:<pgid> in their environment (the step's shell is the leader of
its own process group: sshd starts each command in a session of its own), so Ctrl-C can end exactly that step's
process group over a second channel: SIGTERM, then SIGKILL after 5 s. The step's `run` then raises
KeyboardInterrupt (deploy.host.connection.HostConnection.run).

    token = begin(conn)              # before the command; the command exports step_env(token)
    ...                              # StepRunner.send_interrupt -> end_step(conn, token) on Ctrl-C
    finish(conn, token)              # after it, whatever happened
    was_ended(token)                 # ended by an interrupt: the caller raises KeyboardInterrupt
"""

import sys
import threading
import uuid

from fabric import Connection
from fabric.runners import Remote

# The group is read from the matching environment entry itself, in the one pass over /proc: the step's short-lived
# processes (follow_log.sh starts one every second) may be gone before a second read of the file grep named.
# It prints a line only when the step was not simply ended by SIGTERM: fab shows it (a fab left waiting on a step then says why).
END_STEP = """pg=$(grep -hzox 'FACENET_STEP={token}:[0-9]*' /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | sed -n '1s/^FACENET_STEP={token}://p')
[ -n "$pg" ] && [ "$pg" -gt 1 ] || {{ echo "no process of the step was found on the host"; exit 0; }}
kill -TERM "-$pg" 2>/dev/null || {{ echo "the step's process group $pg had already ended"; exit 0; }}
i=0; while [ $i -lt 25 ] && kill -0 "-$pg" 2>/dev/null; do sleep 0.2; i=$((i + 1)); done
kill -KILL "-$pg" 2>/dev/null && echo "the step's process group $pg was killed: it outlived SIGTERM by 5 s"; exit 0"""
ACTIVE_STEPS = {}  # token -> its connection: the remote steps running now, in every thread
ENDED_STEPS = set()  # tokens of steps ended by an interrupt: their run() raises KeyboardInterrupt
STEPS_LOCK = threading.Lock()


class StepRunner(Remote):
    """Fabric's remote runner, except that Ctrl-C ends the remote step's process group (SIGTERM, then
    SIGKILL) instead of waiting for it to finish; the step's `run` then raises KeyboardInterrupt."""

    def send_interrupt(self, interrupt):
        token = getattr(self.context.steps, "current", None)
        if token is None:
            raise interrupt
        end_step(self.context, token)


def step_env(token):
    """The shell prefix that marks a step's processes with its token and process group."""
    return f"export FACENET_STEP={token}:$$; "


def begin(conn):
    """A new step on `conn` (a HostConnection) in this thread: its token."""
    token = uuid.uuid4().hex[:16]
    with STEPS_LOCK:
        ACTIVE_STEPS[token] = conn
    conn.steps.current = token
    return token


def finish(conn, token):
    conn.steps.current = None
    with STEPS_LOCK:
        ACTIVE_STEPS.pop(token, None)


def was_ended(token):
    return token in ENDED_STEPS


def end_step(conn, token):
    """End the remote step `token`: its process group gets SIGTERM, then SIGKILL after 5 s."""
    with STEPS_LOCK:
        if token in ENDED_STEPS:
            return
        ENDED_STEPS.add(token)
    try:  # Connection.run: not a step of its own
        said = Connection.run(conn, END_STEP.format(token=token), hide=True, warn=True, in_stream=False, timeout=20).stdout.strip()
    except Exception as e:  # noqa: BLE001 - a dead connection ends the remote step anyway (its channel closes)
        said = f"could not reach the host to end it ({type(e).__name__}: {e})"
    if said:
        print(f"Ctrl-C, ending the remote step on {getattr(conn, 'label', None) or conn.host}: {said}", file=sys.stderr, flush=True)


def end_all_steps():
    """Ctrl-C on several hosts at once (a cluster): end every remote step still running."""
    with STEPS_LOCK:
        running = list(ACTIVE_STEPS.items())
    for token, conn in running:
        end_step(conn, token)
