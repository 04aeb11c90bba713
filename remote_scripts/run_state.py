#!/usr/bin/env python3
"""The run-file format on the host, in one place: the state of a run, and the records around it.

    python3 run_state.py --runs-dir ~/facenet-runs --session facenet-training [--run NAME] [--json]
    python3 run_state.py record-launch RUN_DIR PID COMMAND   # launch_training.sh, before the trainer
    python3 run_state.py record-exit RUN_DIR CODE [REASON]   # launch_training.sh, after it
    python3 run_state.py stop RUN_DIR SESSION WAIT_SECONDS   # stop_training.sh

Standard library only (it runs with the system python3, even before the venv exists).
The run is RUNS_DIR/.current unless --run names one. Its state is derived from what the
launcher and the trainer left behind, so a dead run is never mistaken for a missing one:

    exit.json, code 0          finished
    exit.json, code 3          stopped   (on request; resumable)
    exit.json with preempted   preempted (a spot interruption notice stopped it: host_agent.py)
    exit.json, other code      failed    (with a reason: disk-full, killed by a signal, ...)
    tmux session alive         status.json's state (starting, running)
    neither                    vanished  (session gone without an exit record: reboot, kill)
    no run at all              none

The exit record is reserved at launch (`.exit.pending`, a block of spaces) and filled in place
at the end, so it is written even when the disk is full.

Exit code of the state query: 0 running/starting/finished, 1 failed, 3 stopped, 4 vanished, 5 none,
7 preempted.
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

EXIT_CODES = {"starting": 0, "running": 0, "finished": 0, "failed": 1, "stopped": 3, "vanished": 4, "none": 5, "preempted": 7}
STOPPED = 3  # the trainer's exit code for "stopped on request"
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # as trainer/names.py
CURRENT, LAUNCH, EXIT, PENDING = ".current", "launch.json", "exit.json", ".exit.pending"
PREEMPT = ".preempted.json"  # the spot notice, left by host_agent.py for the exit record
PENDING_SIZE = 4096
# `fab monitor` warns below 2 GiB free or 5 % of the disk, whichever is smaller, and always below 64 MiB
LOW_DISK_BYTES, LOW_DISK_FRACTION, LOW_DISK_FLOOR = 2 * 2**30, 0.05, 64 * 2**20
DISK_FULL_BYTES = 1 * 2**20  # a failed run with less than this free failed because the disk is full


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def tail(path, lines):
    """The last `lines` lines of a text file, reading only its end."""
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:  # a log that is a link is not read
            f.seek(0, os.SEEK_END)
            size = f.tell()
            block, data = 8192, b""
            while size > 0 and data.count(b"\n") <= lines:
                step = min(block, size)
                size -= step
                f.seek(size)
                data = f.read(step) + data
    except OSError:
        return []
    text = data.decode("utf-8", "replace").replace("\r", "\n")
    return [line for line in text.splitlines() if line.strip()][-lines:]


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


def session_alive(session):
    try:
        return subprocess.run(["tmux", "has-session", "-t", f"={session}"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def derive_state(exit_record, alive, status):
    if exit_record is not None:
        if exit_record.get("preempted"):
            return "preempted"
        code = exit_record.get("exit_code")
        return "finished" if code == 0 else "stopped" if code == STOPPED else "failed"
    if alive:  # the trainer may have ended already, its launcher still recording the exit
        return status["state"] if status and status.get("state") in ("starting", "running", "finished", "failed", "stopped") else "starting"
    if status and status.get("state") in ("finished", "failed", "stopped"):
        return status["state"]
    return "vanished"


def disk(path):
    usage = shutil.disk_usage(path)
    low = usage.free < max(min(LOW_DISK_BYTES, LOW_DISK_FRACTION * usage.total), LOW_DISK_FLOOR)
    return {"path": path, "free_bytes": usage.free, "total_bytes": usage.total, "low": low}


def read_current(runs_dir):
    try:
        with open(os.path.join(os.path.expanduser(runs_dir), CURRENT)) as f:
            return f.read().strip() or None
    except OSError:
        return None


def running_run(runs_dir, session):
    """(name, run_dir) of the current run while its launcher lives (tmux session or process group), else None."""
    name = read_current(runs_dir)
    if name is None or not RUN_NAME.fullmatch(name):
        return None
    run_dir = os.path.join(os.path.expanduser(runs_dir), name)
    if os.path.exists(os.path.join(run_dir, EXIT)):
        return None
    pgid = (read_json(os.path.join(run_dir, LAUNCH)) or {}).get("pgid")
    return (name, run_dir) if session_alive(session) or (pgid and group_members(pgid)) else None


def uptime():
    try:
        with open("/proc/uptime") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def collect(runs_dir, session, run=None, log_lines=15):
    import host_agent  # imports this module: not at the top

    runs_dir = os.path.expanduser(runs_dir)
    current = read_current(runs_dir)
    run = run or current
    disk_path = runs_dir if os.path.isdir(runs_dir) else os.path.expanduser("~")
    info = {
        "host": socket.gethostname(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "gpus": gpus(),
        "disk": disk(disk_path), "runs_dir": runs_dir, "run": run, "session": session, "state": "none",
        "uptime_seconds": uptime(), "agent": host_agent.view(runs_dir),
    }
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
    alive = run == current and session_alive(session)
    status = read_json(os.path.join(run_dir, "status.json"))
    exit_record = read_json(os.path.join(run_dir, EXIT))
    info.update(
        run_dir=run_dir, session_alive=alive, status=status, exit=exit_record,
        launch=read_json(os.path.join(run_dir, LAUNCH)),
        metrics=read_json(os.path.join(run_dir, "metrics.json")),
        cv=read_json(os.path.join(run_dir, "cv.json")),  # a cross-validation run (trainer/cv.py)
        state=derive_state(exit_record, alive, status),
        log=os.path.join(run_dir, "train.log"), log_tail=tail(os.path.join(run_dir, "train.log"), log_lines),
    )
    return info


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())


def write_atomic(path, text):
    """A temp file beside `path`, then a rename: readers see the old file or the new one. A write
    that fails (a full disk) removes its temp file, so that it holds no space."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def record_launch(run_dir, pid, command):
    """launch.json (pid and process group of the launcher), .current, and the reserved exit record."""
    os.makedirs(run_dir, exist_ok=True)
    for stale in (EXIT, PENDING, PREEMPT):
        if os.path.lexists(os.path.join(run_dir, stale)):  # a link too: removed, never written through
            os.remove(os.path.join(run_dir, stale))
    with open(os.path.join(run_dir, PENDING), "wb") as f:
        f.write(b" " * PENDING_SIZE)
        f.flush()
        os.fsync(f.fileno())
    launch = {"started_at": now(), "pid": pid, "pgid": os.getpgid(pid), "command": command}
    write_atomic(os.path.join(run_dir, LAUNCH), json.dumps(launch))
    run_dir = os.path.abspath(run_dir)
    write_atomic(os.path.join(os.path.dirname(run_dir), CURRENT), os.path.basename(run_dir) + "\n")


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


def record_exit(run_dir, code, reason=None):
    """Fill the reserved exit record in place (no new disk blocks needed), then rename it to exit.json."""
    record = {"exit_code": code, "ended_at": now()}
    preempted = read_json(os.path.join(run_dir, PREEMPT))
    if preempted:
        record["preempted"] = preempted
        notice = preempted.get("notice") or {}
        reason = reason or f"preempted: spot interruption notice ({notice.get('action')} at {notice.get('time')})"
    reason = reason or exit_reason(run_dir, code)
    if reason:
        record["reason"] = reason
    data = json.dumps(record).encode()
    pending = os.path.join(run_dir, PENDING)
    try:
        with open(pending, "r+b") as f:
            f.write(data.ljust(max(len(data), PENDING_SIZE)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(pending, os.path.join(run_dir, EXIT))
    except OSError:
        write_atomic(os.path.join(run_dir, EXIT), json.dumps(record))
    if preempted:
        os.remove(os.path.join(run_dir, PREEMPT))
    return record


def group_members(pgid):
    """PIDs of the live processes in process group `pgid` (from /proc; zombies do not count)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry))
    return found


def wait_for(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def stop(run_dir, session, wait_s, reason=None):
    """SIGTERM to the launcher (the trainer finishes its epoch and exits 3); after `wait_s` the whole
    process group gets SIGTERM, then SIGKILL; nothing of it may survive. Returns (exit code, lines)."""
    lines = []
    launch = read_json(os.path.join(run_dir, LAUNCH)) or {}
    pid, pgid = launch.get("pid"), launch.get("pgid")
    members = (lambda: group_members(pgid)) if pgid else (lambda: [])
    exited = lambda: os.path.exists(os.path.join(run_dir, EXIT))  # noqa: E731
    if not session_alive(session) and not members():
        return 0, [f"No training is running (no tmux session {session})."]
    if members():
        graceful = 10  # the exit record is written: the launcher is finishing
        if not exited():
            lines.append(f"Asking the training to stop after its current epoch (SIGTERM to pid {pid}), waiting up to {wait_s}s ...")
            _signal(pid, signal.SIGTERM)
            graceful = wait_s
        if not wait_for(lambda: not members(), graceful):
            lines.append(f"Still running after {graceful}s: stopping its process group {pgid} at once "
                         "(SIGTERM, then SIGKILL); the backup of the last finished epoch stays.")
            _signal(-pgid, signal.SIGTERM)
            if not wait_for(lambda: not members(), 10):
                _signal(-pgid, signal.SIGKILL)
                wait_for(lambda: not members(), 10)
    survivors = members()
    if launch and not exited() and not survivors:
        record_exit(run_dir, STOPPED, reason=f"{reason or 'stopped by `fab stop`'}: killed after the {wait_s}s grace period")
    subprocess.run(["tmux", "kill-session", "-t", f"={session}"], capture_output=True)
    if survivors:
        lines.append(f"FAILED to stop: process(es) {survivors} of group {pgid} still run. Kill them by hand "
                     f"(sudo kill -9 {' '.join(map(str, survivors))}) before starting another training.")
        return 1, lines
    record = read_json(os.path.join(run_dir, EXIT))
    lines.append(f"Stopped: {json.dumps(record)}" if record else f"The tmux session {session} is gone; the run left no exit record.")
    return 0, lines


def _signal(target, sig):
    try:
        os.kill(target, sig)
    except (ProcessLookupError, PermissionError, TypeError):
        pass


def records_main(argv):
    command, run_dir = argv[0], argv[1]
    if command == "record-launch":
        record_launch(run_dir, int(argv[2]), argv[3])
        return 0
    if command == "record-exit":
        print(json.dumps(record_exit(run_dir, int(argv[2]), reason=argv[3] if len(argv) > 3 else None)))
        return 0
    code, lines = stop(run_dir, argv[2], int(argv[3]))
    print("\n".join(lines))
    return code


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("record-launch", "record-exit", "stop"):
        return records_main(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs-dir", required=True)
    p.add_argument("--session", required=True)
    p.add_argument("--run")
    p.add_argument("--log-lines", type=int, default=15)
    p.add_argument("--json", action="store_true", help="(the output is always JSON)")
    args = p.parse_args(argv)
    info = collect(args.runs_dir, args.session, args.run, args.log_lines)
    info["exit_code"] = EXIT_CODES[info["state"]]  # `fab monitor` exits with it too
    print(json.dumps(info))  # trainer/run_view.py renders it, on the laptop and on the host
    return info["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
