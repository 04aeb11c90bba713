"""One command at a time changes a host: a lock directory on the host, named after its holder.

    holder = new_holder("sync-data")                  # taken by the invocation's bookkeeping command (deploy.host.session)
    refuse_unless_acquired(answer, lock_dir(inv))     # LockHeld (exit 1) naming the holder if taken

`mkdir` is atomic, so two laptops (or two terminals) cannot both take it. The holder
(task, user@machine, pid, since, token, lease_seconds) is kept in RUNS_DIR/.lock/holder.json;
a lock left by a task that died is removed with `fab unlock`. remote_scripts/fab_session.py
takes, renews and releases it on the host.

The holder renews a lease (.lock/lease, touched at every beat of the task's keeper in
deploy.host.agent, at least every minute). The host agent counts a lock with a fresh lease as
activity, so autostop waits for the task; a lease older than lease_seconds was left by a task
that died and counts for nothing.
"""

import getpass
import json
import os
import shlex
import socket
import time
import uuid

from deploy.errors import DeployError
from deploy.host.quoting import rjoin, rq
from trainer.run_format import run_format

LEASE_SECONDS = run_format.LEASE_SECONDS  # three renewals missed at the slowest keeper (60 s): the holder is gone


class LockHeld(DeployError):
    """Another command holds the host's lock."""


def lock_dir(inv):
    return rjoin(inv.remote["runs_dir"], run_format.LOCK_DIR)


def describe(holder):
    if not holder.get("task"):
        return "another command (its holder record is not written yet)"
    return f"`fab {holder['task']}` by {holder.get('by')} (pid {holder.get('pid')}) since {holder.get('since')}"


def new_holder(task):
    """The holder record of a lock taken now by this process for `task` (the task names of a `fab` invocation)."""
    return {"task": task, "by": f"{getpass.getuser()}@{socket.gethostname()}", "pid": os.getpid(), "machine": machine_id(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "token": uuid.uuid4().hex, "lease_seconds": LEASE_SECONDS}


def machine_id():
    """This machine's id (systemd's /etc/machine-id, else the boot id, which changes at a reboot), so that two machines
    of one hostname are told apart; None when neither is readable (macOS): then a left-over lock waits for `fab unlock`."""
    for path in ("/etc/machine-id", "/proc/sys/kernel/random/boot_id"):
        try:
            with open(path) as f:
                value = f.read().strip()
            if value:
                return value
        except OSError:
            continue
    return None


def left_by_a_dead_process_here(holder):
    """The lock's holder (the bookkeeping command's answer when the lock was not acquired) is a `fab` of this user on
    this machine (its name and its machine id) that no longer runs: the lock is left over (the host crashed under the
    task, or the task was killed). A pid alive now may be another process that reused it: then the lock is not taken
    for left over. A container sharing this machine's id but not its processes would be taken for this machine."""
    if holder.get("acquired") or holder.get("by") != f"{getpass.getuser()}@{socket.gethostname()}":
        return False
    if not holder.get("machine") or holder["machine"] != machine_id():  # another machine of this name (or an old holder record)
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def refuse_unless_acquired(answer, path):
    """The bookkeeping command's answer about the lock (remote_scripts/fab_session.py): LockHeld naming the
    holder when another command holds it, DeployError when it could not be made."""
    if answer.get("acquired"):
        return
    if "error" in answer and "task" not in answer:
        raise DeployError(f"Could not take the host's lock {path}: {answer['error'][-400:]}")
    raise LockHeld(f"Another command is changing this host: {describe(answer)}. Wait for it to finish. If it is no "
                   f"longer running (its terminal closed, its laptop slept), remove its lock with `fab unlock`.")


def unlock(conn, inv, token=None):
    """Remove the host's lock; returns the holder it had (None if there was none). With `token`, only while the lock is
    still that holder's (two `fab` of this machine finding one left-over lock: the second must not remove the first's)."""
    path = lock_dir(inv)
    holder = rq(rjoin(path, run_format.LOCK_HOLDER))
    remove = f"grep -qF {shlex.quote(token)} {holder} && rm -rf {rq(path)}" if token else f"rm -rf {rq(path)}"
    out = conn.run(f"cat {holder} 2>/dev/null || echo null; {remove}", hide=True, warn=True, in_stream=False)
    try:
        return json.loads(out.stdout)
    except ValueError:
        return {}
