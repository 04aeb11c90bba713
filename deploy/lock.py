"""One command at a time changes a host: a lock directory on the host, named after its holder.

    with host_lock(conn, inv, "sync-data"):   # LockHeld (exit 1) naming the holder if taken
        ...

`mkdir` is atomic, so two laptops (or two terminals) cannot both take it. The holder
(task, user@machine, pid, since, lease_seconds) is kept in RUNS_DIR/.lock/holder.json; a lock
left by a task that died is removed with `fab unlock`.

The holder renews a lease (.lock/lease, touched by the task's keeper in deploy.agent at least
every minute: `lease_command(conn)`). The host agent counts a lock with a fresh lease as
activity, so autostop waits for the task; a lease older than lease_seconds was left by a task
that died and counts for nothing.
"""

import contextlib
import getpass
import json
import os
import shlex
import socket
import time
import uuid

from deploy.errors import DeployError
from deploy.hosts import rjoin, rq

LEASE_SECONDS = 180  # three renewals missed at the slowest keeper (60 s): the holder is gone
_held = {}  # id(conn) -> (lock dir, token) while this process holds that host's lock


class LockHeld(DeployError):
    """Another command holds the host's lock."""


def lock_dir(inv):
    return rjoin(inv.remote["runs_dir"], ".lock")


def describe(holder):
    if not holder.get("task"):
        return "another command (its holder record is not written yet)"
    return f"`fab {holder['task']}` by {holder.get('by')} (pid {holder.get('pid')}) since {holder.get('since')}"


@contextlib.contextmanager
def host_lock(conn, inv, task):
    path = lock_dir(inv)
    holder = {"task": task, "by": f"{getpass.getuser()}@{socket.gethostname()}", "pid": os.getpid(),
              "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "token": uuid.uuid4().hex, "lease_seconds": LEASE_SECONDS}
    record = rq(rjoin(path, "holder.json"))
    out = conn.run(f"mkdir -p {rq(inv.remote['runs_dir'])} && if mkdir {rq(path)} 2>/dev/null; then "
                   f"printf %s {shlex.quote(json.dumps(holder))} > {record} && touch {rq(rjoin(path, 'lease'))} && "
                   f"echo '{{\"acquired\": true}}'; "
                   f"else cat {record} 2>/dev/null || echo '{{}}'; fi", hide=True, warn=True, in_stream=False)
    try:
        answer = json.loads(out.stdout)
    except ValueError:
        raise DeployError(f"Could not take the host's lock {path}: {(out.stderr or out.stdout).strip()[-400:]}") from None
    if not answer.get("acquired"):
        raise LockHeld(f"Another command is changing this host: {describe(answer)}. Wait for it to finish. If it is no "
                       f"longer running (its terminal closed, its laptop slept), remove its lock with `fab unlock`.")
    _held[id(conn)] = (path, holder["token"])
    try:
        yield
    finally:
        _held.pop(id(conn), None)
        conn.run(f"grep -qF {shlex.quote(holder['token'])} {record} 2>/dev/null && rm -rf {rq(path)}",
                 hide=True, warn=True, in_stream=False)


def lease_command(conn):
    """The shell command that renews the lease of the lock this process holds on `conn`'s host
    (only while its holder record is still ours: `fab unlock` may have removed it), or None."""
    held = _held.get(id(conn))
    if held is None:
        return None
    path, token = held
    return f"grep -qF {shlex.quote(token)} {rq(rjoin(path, 'holder.json'))} 2>/dev/null && touch {rq(rjoin(path, 'lease'))}"


def unlock(conn, inv):
    """Remove the host's lock; returns the holder it had (None if there was none)."""
    path = lock_dir(inv)
    out = conn.run(f"cat {rq(rjoin(path, 'holder.json'))} 2>/dev/null || echo null; rm -rf {rq(path)}", hide=True, warn=True, in_stream=False)
    try:
        return json.loads(out.stdout)
    except ValueError:
        return {}
