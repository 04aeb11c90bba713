#!/usr/bin/env python3
"""The run-file format on the host, in one place: the state of a run, and the records around it.

    python3 run_state.py --runs-dir ~/facenet-runs --session facenet-training [--run NAME] [--stall-seconds S] [--quick] [--json]
                         [--wait-start S]   # fab train: answer once the run has left `starting` (or S seconds)
    python3 run_state.py record-launch RUN_DIR PID COMMAND      # launch_training.sh, before the trainer; prints the launch id
    python3 run_state.py record-exit RUN_DIR CODE [LAUNCH_ID [REASON]]   # launch_training.sh, after it
    python3 run_state.py stop RUN_DIR SESSION WAIT_SECONDS      # stop_training.sh
    python3 run_state.py alive RUN_DIR                          # exit 0 while a process of the run lives (follow_log.sh)
    python3 run_state.py fence RUN_DIR LAUNCH_ID REASON         # fab watch: that launch may no longer train the run
    python3 run_state.py activity RUNS_DIR SESSION [STALL_SECONDS]  # fab instances: is it training, since when idle
    python3 run_state.py runs RUNS_DIR                          # fab down: the run folders, with their start and launch

Standard library only (it runs with the system python3, even before the venv exists). The files it shares with
host_agent.py (.current, launch.json, the exit records, the agent's files) are read by host_files.py.
The run is RUNS_DIR/.current unless --run names one. Its state is derived from what the
launcher and the trainer left behind, so a dead run is never mistaken for a missing one:

    exit record, code 0        finished
    exit record, code 5        superseded (fenced: RUN/fenced.json named its launch, the run continues under another one;
                                          it stopped at an epoch end without a result)
    exit record, code 3        stopped   (resumable; `requested` in it when `fab stop` or the budget cap asked: stop() leaves
                                          .stop-request.json for the record, so a shutdown's SIGTERM is told apart)
    exit record with preempted preempted (a spot interruption notice stopped it: host_agent.py)
    exit record, other code    failed    (with a reason: disk-full, killed by a signal, ...)
    processes alive            status.json's state (starting, running), or stalled: status.json
                               not rewritten for the stall threshold while the processes live
    neither                    vanished  (its processes are gone without an exit record: reboot, kill)
    no run at all              none

Alive means: a process of the process group recorded in launch.json lives, and the group is the
launch's (the group leader's start time, /proc/PID/stat field 22, and the boot id match), so a
reused PID is never taken for the run. The tmux session does not count: closing it while the
trainer lives leaves the run running. Every launch has a launch id (launch.json) and its own exit
record, exits/<launch id>.json, reserved at launch (`.pending`, a block of spaces) and filled in
place at the end, so it is written even when the disk is full; exit.json is a link to the current
launch's record (for people and old readers), and a late record of an earlier launch never
becomes it. Runs launched before launch ids have exit.json alone, and it is read as before.

The stall threshold is --stall-seconds (the inventory's stall_minutes), else the host agent's
setting, else max(15 minutes, 3 x the slowest epoch so far).

Exit code of the state query: 0 running/starting/finished, 1 failed, 3 stopped, 4 vanished, 5 none,
7 preempted, 8 stalled, 11 superseded.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import host_files
import storage_state
from host_files import (  # the files it shares with host_agent.py (see host_files.py)
    exit_path,
    exit_record,
    now,
    progress,
    read_current,
    read_json,
    read_launch,
    running_run,  # noqa: F401 - part of this module's API
    session_alive,
    stalled_since,  # noqa: F401 - part of this module's API
)
from liveness import boot_id, describe_processes, live_processes, proc_stat
from run_format import (  # the run's files and exit codes: one owner for the trainer, the laptop and the host
    CURRENT,
    CV,
    EXIT,
    EXITS,
    FENCE,
    LAUNCH,
    LAUNCH_ID,
    LIVE,
    LOG,
    METRICS,
    PENDING,
    PREEMPT,
    RECOVERIES,
    RUN_NAME,
    STATUS,
    STOP_REQUEST,
    STOPPED,
    SUPERSEDED,
    write_atomic,
)

EXIT_CODES = {"starting": 0, "running": 0, "finished": 0, "failed": 1, "stopped": 3, "vanished": 4, "none": 5, "preempted": 7,
              "stalled": 8, "superseded": 11}
PENDING_SIZE = 4096
# `fab monitor` warns below 2 GiB free or 5 % of the disk, whichever is smaller, and always below 64 MiB
LOW_DISK_BYTES, LOW_DISK_FRACTION, LOW_DISK_FLOOR = 2 * 2**30, 0.05, 64 * 2**20
DISK_FULL_BYTES = 1 * 2**20  # a failed run with less than this free failed because the disk is full


# TensorFlow's C++ log lines that say nothing about the run: its info and warning lines (absl's
# `W0000 00:00:1764000000.000000 4242 file.cc:55] ...`, whose seconds are the epoch's before absl::InitializeLog, and
# the older `2026-12-06 10:00:00.123456: I tensorflow/.../file.cc:153] ...`), absl's preamble, cpu_feature_guard's
# second line, and the error-level lines every start prints on some machines (a second registration of a CUDA
# library, oneDNN's DT_BOOL note). Other errors and every fatal line stay: they explain a crash.
# `fab monitor` and `fab logs` leave these out unless --raw.
_ABSL = r"(?:{0}\d{{4}} \d\d:\d\d:\d+\.\d+\s+\d+ [\w./-]+:\d+\] |\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: {0} [\w./-]+:\d+\] )"
TF_NOISE = re.compile(_ABSL.format("[IW]")
                      + "|" + _ABSL.format("E") + r"(?:Unable to register cu\w+ factory|oneDNN supports DT_\w+ only"
                                                   r"|computation placer already registered)"
                      + r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
                      r"|To enable the following instructions: .* in other operations, rebuild TensorFlow")
TAIL_MAX_BYTES = 8 * 2**20  # the log's end read at most: past it, noise alone is not searched further


def quiet(lines):
    """`lines` without TensorFlow's C++ log lines that say nothing about the run (TF_NOISE)."""
    return [line for line in lines if not TF_NOISE.match(line)]


def tail(path, lines, raw=False):
    """The last `lines` non-blank lines of a text file, reading only its end; without TensorFlow's C++ log lines
    unless `raw`."""
    keep = (lambda found: found) if raw else quiet
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:  # a log that is a link is not read
            f.seek(0, os.SEEK_END)
            size = f.tell()
            block, data = 8192, b""
            while size > 0 and len(data) < TAIL_MAX_BYTES and (
                    data.count(b"\n") <= lines or len(keep(data.decode("utf-8", "replace").splitlines())) <= lines):
                step = min(block, size)
                size -= step
                f.seek(size)
                data = f.read(step) + data
                block = min(block * 2, 1 << 20)
    except OSError:
        return []
    text = data.decode("utf-8", "replace").replace("\r", "\n")
    return keep([line for line in text.splitlines() if line.strip()])[-lines:] if lines > 0 else []


def gpus():
    """nvidia-smi's view, or None where there is no nvidia-smi."""
    if not shutil.which("nvidia-smi"):
        return None
    query = "name,utilization.gpu,memory.used,memory.total"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        return [{"error": str(e)}]
    if out.returncode != 0:
        return [{"error": (out.stderr or out.stdout).strip()}]
    rows = []
    for line in out.stdout.strip().splitlines():
        name, util, used, total = (v.strip() for v in line.split(","))
        rows.append({"name": name, "utilization": util, "memory_used_mib": used, "memory_total_mib": total})
    return rows


def derive_state(exit_record, alive, status, stalled=False):
    if exit_record is not None:
        if exit_record.get("preempted"):
            return "preempted"
        code = exit_record.get("exit_code")
        return "finished" if code == 0 else "stopped" if code == STOPPED else "superseded" if code == SUPERSEDED else "failed"
    if alive:  # the trainer may have ended already, its launcher still recording the exit
        state = status["state"] if status and status.get("state") in ("starting", "running", "finished", "failed", "stopped") else "starting"
        return "stalled" if stalled and state in ("starting", "running") else state
    if status and status.get("state") in ("finished", "failed", "stopped"):
        return status["state"]
    return "vanished"


def disk(path):
    usage = shutil.disk_usage(path)
    low = usage.free < max(min(LOW_DISK_BYTES, LOW_DISK_FRACTION * usage.total), LOW_DISK_FLOOR)
    return {"path": path, "free_bytes": usage.free, "total_bytes": usage.total, "low": low}


# a run just launched: the trainer checks its data and builds its model, or its launcher has not recorded it yet
STARTING = ("starting", "none", "vanished")


def uptime():
    try:
        with open("/proc/uptime") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def collect(runs_dir, session, run=None, log_lines=15, stall_seconds=None, quick=False, raw_log=False):
    """The run's state and what the monitor shows with it. `quick`: without the GPUs (nvidia-smi) and
    the host agent, for a task that only asks whether a training runs."""
    runs_dir = os.path.expanduser(runs_dir)
    current = read_current(runs_dir)
    run = run or current
    disk_path = runs_dir if os.path.isdir(runs_dir) else os.path.expanduser("~")
    info = {
        "host": socket.gethostname(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "gpus": None if quick else gpus(),
        "disk": disk(disk_path), "runs_dir": runs_dir, "run": run, "session": session, "state": "none",
        "uptime_seconds": uptime(), "agent": None, "processes": [], "training": False,
    }
    info["agent_alive"] = host_files.agent_running(runs_dir)  # cheap (a pid and its command line): `fab watch` restarts a dead one
    if not quick:
        info["agent"] = host_files.view(runs_dir)
    if run is None:
        return info
    if not RUN_NAME.fullmatch(run):  # a name is a path: never follow one that leaves the runs dir
        info.update(run=None, error=f"invalid run name {run!r} (in {os.path.join(runs_dir, CURRENT)} or --run): "
                                    "expected 1-100 letters, digits, '.', '_' or '-'")
        return info
    run_dir = os.path.join(runs_dir, run)
    if not os.path.isdir(run_dir):
        info.update(state="none", error=f"no run directory {run_dir}")
        return info
    launch = read_launch(run_dir)
    pids = live_processes(launch)
    session_up = run == current and session_alive(session)
    alive = bool(pids) or (not launch.get("pgid") and session_up)  # a run launched before launch.json held a group
    status = read_json(os.path.join(run_dir, STATUS))
    status = status if isinstance(status, dict) else None
    stale = status is not None and current_status(run_dir, status) is None
    if stale:  # the previous launch's word: its epochs hold, its state and error are not this launch's
        status = {k: v for k, v in status.items() if k not in ("state", "error")}
    record = exit_record(run_dir, launch)
    stall = progress(run_dir, status, stall_seconds, runs_dir) if alive and record is None else None
    info.update(
        run_dir=run_dir, session_alive=session_up, processes=describe_processes(pids), status=status, exit=record,
        launch=launch or None, stall=stall,
        metrics=read_json(os.path.join(run_dir, METRICS)),
        cv=read_json(os.path.join(run_dir, CV)),  # a cross-validation run (trainer/training/cv.py)
        recoveries=(read_json(os.path.join(run_dir, RECOVERIES)) or {}).get("recoveries"),  # `fab watch` moved it here
        state=derive_state(record, alive, status, stalled=bool(stall and stall["stalled"])), stale_status=stale,
        log=os.path.join(run_dir, LOG), log_tail=tail(os.path.join(run_dir, LOG), log_lines, raw_log),
        storage=storage_state.view(run_dir),  # the run's checkpoints in object storage (trainer/storage/uploader.py)
    )
    info["training"] = training(info)
    return info


def training(info):
    """Is it training? A process of the run lives, or (a run launched before launch.json held a process group) its
    state says so. The one answer that `fab monitor`, `fab down`, `fab instances` and `fab watch` read."""
    return bool(info.get("processes")) or info.get("state") in LIVE


def activity(runs_dir, session, stall_seconds=None):
    """`fab instances`' question: {now, boot, heartbeat, run, state, training, run_ended}, from collect (quick) and
    the times that say when the host was last busy: the boot, a fab task's heartbeat, the end of the current run."""
    info = collect(runs_dir, session, log_lines=0, stall_seconds=stall_seconds, quick=True)
    up = info["uptime_seconds"]
    path = exit_path(info["run_dir"], info.get("launch") or {}) if info.get("exit") is not None else None
    ended = host_files.mtime(path) if path else None
    return {"now": time.time(), "boot": time.time() - up if up is not None else None, "run": info["run"], "state": info["state"],
            "training": training(info), "run_ended": ended,
            "heartbeat": host_files.mtime(host_files.files(runs_dir)["heartbeat"]) or None}


def list_runs(runs_dir):
    """[{run, started_at, launch_id}] of the run folders (those holding a config.yaml): what `fab down` weighs."""
    runs_dir = os.path.expanduser(runs_dir)
    try:
        names = sorted(os.listdir(runs_dir))
    except OSError:
        names = []

    def field(run, name, key):
        value = read_json(os.path.join(runs_dir, run, name))
        return value.get(key) if isinstance(value, dict) else None

    return [{"run": n, "started_at": field(n, STATUS, "started_at"), "launch_id": field(n, LAUNCH, "launch_id")}
            for n in names if RUN_NAME.fullmatch(n) and os.path.isfile(os.path.join(runs_dir, n, "config.yaml"))]


def current_status(run_dir, status):
    """status.json as this launch's word: None while it is older than launch.json (a resumed run's trainer has not
    rewritten it yet, and its `failed` is the previous launch's, not this one's)."""
    try:
        stale = os.stat(os.path.join(run_dir, STATUS)).st_mtime_ns < os.stat(os.path.join(run_dir, LAUNCH)).st_mtime_ns
    except OSError:
        return status
    return None if stale else status


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
    tmp = os.path.join(run_dir, f"{EXIT}.{os.getpid()}.tmp")
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
            _signal(-pgid, signal.SIGTERM)
            _signal(-pgid, signal.SIGCONT)
            if not wait_for(lambda: not members(), 10):
                _signal(-pgid, signal.SIGKILL)
                wait_for(lambda: not members(), 10)
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


def _signal(target, sig):
    try:
        os.kill(target, sig)
    except (ProcessLookupError, PermissionError, TypeError):
        pass


def records_main(argv):
    command, run_dir = argv[0], argv[1]
    if command == "record-launch":
        try:
            print(record_launch(run_dir, int(argv[2]), argv[3]))
        except RunAlive as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    if command == "fence":  # run_state.py fence RUN_DIR LAUNCH_ID REASON   (`fab watch`, when the old host answers again)
        print(json.dumps(fence(run_dir, argv[2], argv[3] if len(argv) > 3 else "")))
        return 0
    if command == "record-exit":
        print(json.dumps(record_exit(run_dir, int(argv[2]), launch_id=argv[3] if len(argv) > 3 and argv[3] else None,
                                     reason=argv[4] if len(argv) > 4 else None)))
        return 0
    if command == "alive":
        return 0 if live_processes(read_launch(run_dir)) else 1
    code, lines = stop(run_dir, argv[2], int(argv[3]))
    print("\n".join(lines))
    return code


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("record-launch", "record-exit", "stop", "alive", "fence"):
        return records_main(argv)
    if argv and argv[0] == "activity":  # run_state.py activity RUNS_DIR SESSION [STALL_SECONDS]   (`fab instances`)
        print(json.dumps(activity(argv[1], argv[2], float(argv[3]) if len(argv) > 3 and argv[3] else None)))
        return 0
    if argv and argv[0] == "runs":  # run_state.py runs RUNS_DIR   (`fab down`: the runs its disk holds)
        print(json.dumps(list_runs(argv[1])))
        return 0
    if argv and argv[0] == "tail":  # run_state.py tail FILE LINES [--raw]   (`fab logs`)
        print("\n".join(tail(argv[1], int(argv[2]), raw="--raw" in argv[3:])))
        return 0
    if argv and argv[0] == "quiet":  # run_state.py quiet < LOG   (follow_log.sh: stdin without TensorFlow's C++ lines)
        for line in sys.stdin:
            if not TF_NOISE.match(line):
                sys.stdout.write(line)
                sys.stdout.flush()
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs-dir", required=True)
    p.add_argument("--session", required=True)
    p.add_argument("--run")
    p.add_argument("--log-lines", type=int, default=15)
    p.add_argument("--stall-seconds", type=float, help="status.json older than this while the run's processes live: stalled")
    p.add_argument("--quick", action="store_true", help="skip the GPUs and the host agent (is a training running?)")
    p.add_argument("--raw-log", action="store_true", help="the log's last lines as they are (default: without TensorFlow's C++ lines)")
    p.add_argument("--json", action="store_true", help="(the output is always JSON)")
    p.add_argument("--wait-start", type=float, default=0, metavar="S",
                   help="answer once the run is past its start (its first epoch began, or it ended), or after S seconds")
    p.add_argument("--previous-launch", metavar="ID",
                   help="with --wait-start: the run's launch before this one, whose state is never the answer (a resumed "
                        "failed run read as failed before its new launcher had recorded itself)")
    p.add_argument("--recorded-only", action="store_true",
                   help="with --previous-launch: answer once the new launch has recorded itself, whatever its state (a "
                        "worker of a cluster stays starting until every worker joined)")
    args = p.parse_args(argv)
    query = dict(stall_seconds=args.stall_seconds, quick=args.quick, raw_log=args.raw_log)
    info = collect(args.runs_dir, args.session, args.run, args.log_lines, **query)
    deadline = time.monotonic() + args.wait_start
    old = lambda info: args.previous_launch and (info.get("launch") or {}).get("launch_id") in (args.previous_launch, None)  # noqa: E731
    starting = (lambda info: False) if args.recorded_only else (lambda info: info["state"] in STARTING)  # noqa: E731
    while (starting(info) or old(info)) and time.monotonic() < deadline:
        time.sleep(0.3)
        info = collect(args.runs_dir, args.session, args.run, args.log_lines, **query)
    info["exit_code"] = EXIT_CODES[info["state"]]  # `fab monitor` exits with it too
    if args.wait_start and old(info):
        info["launch_recorded"] = False  # the new launch never recorded itself: `info` is still the previous one's
    print(json.dumps(info))  # trainer/results/run_view.py renders it, on the laptop and on the host
    return info["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
