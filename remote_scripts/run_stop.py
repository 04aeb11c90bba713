"""`fab stop` on the host: a run's process group stopped, gracefully first (standard library only; run_state.py's
stop command, stop_training.sh, the host agent's spot notice and budget cap).

    code, lines = stop(RUN_DIR, SESSION, wait_seconds, reason)   # 0 when nothing of the run lives any more
"""

import json
import os
import signal
import subprocess
import time

from host_files import exit_record, now, read_json, read_launch, session_alive
from liveness import live_processes
from run_format import STATUS, STOP_REQUEST, STOPPED, write_atomic
from run_records import record_exit


def wait_for(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def stop(run_dir, session, wait_s, reason=None):
    """SIGTERM to the launcher (the trainer finishes its epoch and exits 3), or to the trainer itself
    when the launcher is gone; SIGCONT with it, so that a stopped process can act on it. After
    `wait_s` the whole process group gets SIGTERM, then SIGKILL; nothing of it may survive. Works by
    the process group recorded in launch.json, with or without the tmux session. Returns (exit code, lines)."""
    lines = []
    launch = read_launch(run_dir)
    pid, pgid = launch.get("pid"), launch.get("pgid")
    members = lambda: live_processes(launch)  # noqa: E731
    exited = lambda: exit_record(run_dir, launch) is not None  # noqa: E731
    if not session_alive(session) and not members():
        return 0, [f"No training is running (no live process of its process group, no tmux session {session})."]
    if members() and not exited():
        try:  # the exit record will say that this stop was asked for (best-effort: a full disk must not keep it from stopping)
            write_atomic(os.path.join(run_dir, STOP_REQUEST), json.dumps({"by": reason or "`fab stop`", "at": now()}))
        except OSError:
            pass
    forced = False
    if members():
        graceful = 10  # the exit record is written: the launcher is finishing
        if not exited():
            if pid in members():
                lines.append(f"Asking the training to stop after its current epoch (SIGTERM to its launcher, pid {pid}), "
                             f"waiting up to {wait_s}s ...")
                _signal(pid, signal.SIGTERM)
            else:
                lines.append(f"Its launcher (pid {pid}) is gone: asking the trainer to stop after its current epoch "
                             f"(SIGTERM to process group {pgid}), waiting up to {wait_s}s ...")
                _signal(-pgid, signal.SIGTERM)
            _signal(-pgid, signal.SIGCONT)  # a stopped (SIGSTOP) trainer must run to act on it
            graceful = wait_s
        if not wait_for(lambda: not members(), graceful):
            forced = True
            lines.append(f"Still running after {graceful}s: stopping its process group {pgid} at once "
                         "(SIGTERM, then SIGKILL); the backup of the last finished epoch stays.")
            end_group(pgid, members)
    survivors = members()
    if launch and not exited() and not survivors:
        why = f"killed after the {wait_s}s grace period" if forced else "its launcher was gone, so this stop recorded the end"
        record_exit(run_dir, STOPPED, reason=f"{reason or 'stopped by `fab stop`'}: {why}")
    subprocess.run(["tmux", "kill-session", "-t", f"={session}"], capture_output=True)
    if survivors:
        lines.append(f"FAILED to stop: process(es) {survivors} of group {pgid} still run. Kill them by hand "
                     f"(sudo kill -9 {' '.join(map(str, survivors))}) before starting another training.")
        return 1, lines
    record = exit_record(run_dir, launch)
    lines.append(stopped_sentence(run_dir, record) if record else f"The tmux session {session} is gone; the run left no exit record.")
    return 0, lines


def end_group(pgid, members):
    """The whole process group at once: SIGTERM (with SIGCONT, so that a stopped process acts on it), then SIGKILL
    when a member still lives 10 s later."""
    _signal(-pgid, signal.SIGTERM)
    _signal(-pgid, signal.SIGCONT)
    if not wait_for(lambda: not members(), 10):
        _signal(-pgid, signal.SIGKILL)
        wait_for(lambda: not members(), 10)


def stopped_sentence(run_dir, record):
    """What `fab stop` answers: the run, its epoch, and how to continue (from its exit record and status.json)."""
    name, status = os.path.basename(os.path.normpath(run_dir)), read_json(os.path.join(run_dir, STATUS)) or {}
    epoch, epochs = status.get("epoch"), status.get("epochs")
    at = (f"after epoch {epoch}" + (f" of {epochs}" if epochs else "") if isinstance(epoch, int) and epoch > 0
          else "before its first epoch ended")
    code = record.get("exit_code")
    if code == STOPPED:
        keep = "the backup of that epoch is kept" if isinstance(epoch, int) and epoch > 0 else "nothing was trained yet"
        return f"Stopped run {name} {at}; {keep}. Continue it with `fab train --resume`."
    if code == 0:
        return f"Run {name} had finished already ({at}): nothing to stop. `fab fetch-results` brings it home."
    why = record.get("reason") or f"exit code {code}"
    return f"Run {name} ended {at} with exit code {code} ({why}). `fab monitor` says what to do next."


def _signal(target, sig):
    try:
        os.kill(target, sig)
    except (ProcessLookupError, PermissionError, TypeError):
        pass
