"""A run's launch and exit records, and its fence (standard library only; run_state.py's record-launch, record-exit
and fence commands).

    launch_id = record_launch(RUN_DIR, pid, command)   # launch.json, .current, the reserved exit record; RunAlive
    record_exit(RUN_DIR, code, reason, launch_id)      # that launch's exit record, filled in place
    fence(RUN_DIR, launch_id, reason)                  # that launch may no longer train the run (RUN/fenced.json)
    fenced(RUN_DIR, launch_id)                         # the fence record when it names that launch, else None

Every launch has a launch id (launch.json) and its own exit record, exits/<launch id>.json, reserved at launch
(`.pending`, a block of spaces) and filled in place at the end, so it is written even when the disk is full;
exit.json is a link to the current launch's record (for people and old readers), and a late record of an earlier
launch never becomes it. Runs launched before launch ids have exit.json alone, and it is read as before.
"""

import json
import os
import signal
import time

from host_facts import disk
from host_files import now, read_json, read_launch
from liveness import boot_id, describe_processes, live_processes, proc_stat
from run_format import CURRENT, EXIT, EXITS, FENCE, LAUNCH, LAUNCH_ID, PENDING, PREEMPT, STOP_REQUEST, STOPPED, temp_name, write_atomic

PENDING_SIZE = 4096
DISK_FULL_BYTES = 1 * 2**20  # a failed run with less than this free failed because the disk is full


class RunAlive(Exception):
    """A launch refused: a process of the run's previous launch still lives."""


def record_launch(run_dir, pid, command):
    """launch.json (launch id, pid, process group, the group leader's start time, boot id, command),
    .current, and the reserved exit record of this launch; returns the launch id. RunAlive, and
    nothing written, while a process of the run's previous launch lives: two trainers on one run
    directory would overwrite each other's files."""
    os.makedirs(run_dir, exist_ok=True)
    survivors = live_processes(read_launch(run_dir))
    if survivors:
        described = "; ".join(f"pid {p['pid']} {p['command']}" for p in describe_processes(survivors))
        raise RunAlive(f"run {os.path.basename(os.path.abspath(run_dir))} still has live processes ({described}): "
                       "refusing to start another trainer on it; stop it first (`fab stop`)")
    if os.path.islink(os.path.join(run_dir, EXITS)):  # a tampered run: never write records through a link
        os.remove(os.path.join(run_dir, EXITS))
    for stale in (EXIT, PENDING, PREEMPT, STOP_REQUEST):  # exit.json: the previous launch's (its record stays in exits/)
        if os.path.lexists(os.path.join(run_dir, stale)):  # a link too: removed, never written through
            os.remove(os.path.join(run_dir, stale))
    launch_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{pid}"
    os.makedirs(os.path.join(run_dir, EXITS), exist_ok=True)
    with open(os.path.join(run_dir, EXITS, f"{launch_id}.pending"), "wb") as f:
        f.write(b" " * PENDING_SIZE)
        f.flush()
        os.fsync(f.fileno())
    pgid = os.getpgid(pid)
    leader = proc_stat(pgid)
    launch = {"launch_id": launch_id, "started_at": now(), "pid": pid, "pgid": pgid, "leader_start": leader[2] if leader else None,
              "boot_id": boot_id(), "command": command}
    write_atomic(os.path.join(run_dir, LAUNCH), json.dumps(launch))
    run_dir = os.path.abspath(run_dir)
    write_atomic(os.path.join(os.path.dirname(run_dir), CURRENT), os.path.basename(run_dir) + "\n")
    return launch_id


def exit_reason(run_dir, code):
    """Why a run ended with `code`, in words, or None for a normal end."""
    if code in (0, STOPPED):
        return None
    if disk(run_dir)["free_bytes"] < DISK_FULL_BYTES:
        return f"the disk holding {run_dir} is full"
    if code > 128:
        try:
            name = signal.Signals(code - 128).name
        except ValueError:
            name = f"signal {code - 128}"
        if code - 128 == signal.SIGKILL:
            return (f"killed by {name} (exit {code}), usually the kernel's out-of-memory killer: "
                    "see `sudo dmesg | grep -i -e oom -e 'killed process'` on the host")
        return f"killed by {name} (exit {code})"
    return None


def record_exit(run_dir, code, reason=None, launch_id=None):
    """The exit record of launch `launch_id` (default: the current one): its reserved file filled in
    place (no new disk blocks needed), then renamed to exits/<launch id>.json; exit.json links to it
    while that launch is still the run's current one. A launch's record is never another's."""
    launch = read_launch(run_dir)
    launch_id = launch_id or launch.get("launch_id")
    if launch_id is not None and not LAUNCH_ID.fullmatch(str(launch_id)):
        raise ValueError(f"invalid launch id {launch_id!r}")
    current = launch_id is None or launch.get("launch_id") == launch_id
    record = {"exit_code": code, "ended_at": now(), **({"launch_id": launch_id} if launch_id else {})}
    preempted = read_json(os.path.join(run_dir, PREEMPT)) if current else None
    requested = read_json(os.path.join(run_dir, STOP_REQUEST)) if current else None
    if requested:  # `fab watch` restarts a stop nobody asked for (a shutdown's SIGTERM), never this one
        record["requested"] = requested
    if preempted:
        record["preempted"] = preempted
        notice = preempted.get("notice") or {}
        reason = reason or f"preempted: spot interruption notice ({notice.get('action')} at {notice.get('time')})"
    reason = reason or exit_reason(run_dir, code)
    if reason:
        record["reason"] = reason
    if launch_id is None:  # a run launched before launch ids
        pending, final = os.path.join(run_dir, PENDING), os.path.join(run_dir, EXIT)
    else:
        pending, final = (os.path.join(run_dir, EXITS, f"{launch_id}{ext}") for ext in (".pending", ".json"))
    data = json.dumps(record).encode()
    try:
        with open(pending, "r+b") as f:
            f.write(data.ljust(max(len(data), PENDING_SIZE)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(pending, final)
    except OSError:
        os.makedirs(os.path.dirname(final), exist_ok=True)
        write_atomic(final, json.dumps(record))
    if launch_id is not None and read_launch(run_dir).get("launch_id") == launch_id:
        _link_exit_json(run_dir, final)
    for marker in (PREEMPT, STOP_REQUEST) if current else ():
        if os.path.lexists(os.path.join(run_dir, marker)):
            os.remove(os.path.join(run_dir, marker))
    return record


def _link_exit_json(run_dir, record_path):
    """exit.json as a hard link to the launch's record (a new name, no new data blocks); best-effort."""
    tmp = os.path.join(run_dir, temp_name(EXIT))
    try:
        if os.path.lexists(tmp):
            os.remove(tmp)
        os.link(record_path, tmp)
        os.replace(tmp, os.path.join(run_dir, EXIT))
    except OSError:
        try:
            with open(record_path) as f:
                write_atomic(os.path.join(run_dir, EXIT), f.read())
        except OSError:
            pass


def fence(run_dir, launch_id, reason):
    """Launch `launch_id` may no longer train the run (it moved to another launch): its trainer stops at its next epoch
    end without a result (exit SUPERSEDED), its host agent sends nothing of it. Written atomically; returns the record."""
    if not LAUNCH_ID.fullmatch(str(launch_id)):
        raise ValueError(f"invalid launch id {launch_id!r}")
    record = {"launch_id": launch_id, "reason": str(reason)[:500], "at": now()}
    write_atomic(os.path.join(run_dir, FENCE), json.dumps(record))
    return record


def fenced(run_dir, launch_id):
    """The fence record when it names launch `launch_id`, else None."""
    record = read_json(os.path.join(run_dir, FENCE))
    return record if isinstance(record, dict) and launch_id and record.get("launch_id") == launch_id else None
