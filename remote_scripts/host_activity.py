"""What keeps a host busy besides a training, for the host agent's autostop (standard library only).

    fab_task(runs_dir)      # "fab sync-data holds the host lock" while its lease is fresh, else None
    ssh_sessions()          # ["root on pts/3"]: interactive SSH logins
    gpu_processes()         # ([4242], None), or (None, None) without nvidia-smi, or ([], error)

An interactive SSH login is a process on a pseudo-terminal (/dev/pts/N) that descends from sshd,
as SkyPilot's default `jobs_and_ssh` counts it: a shell, an editor, a `tmux attach`. A command
run over SSH without a terminal (every `fab` task, rsync, scp) is not one; a `fab` task counts
through its heartbeat and the lock's lease instead. The training's own tmux panes descend from
the tmux server, not from sshd.

A task that changes the host holds RUNS_DIR/.lock (deploy/host/lock.py) and touches .lock/lease at
least every minute while it runs; a lock whose lease is older than its holder's `lease_seconds`
was left by a task that died and counts for nothing.
"""

import json
import os
import shutil
import subprocess
import time

from run_format import LEASE_SECONDS, LOCK_DIR, LOCK_HOLDER, LOCK_LEASE  # the host lock's files: deploy/host/lock.py takes it

SSHD_NAMES = ("sshd", "sshd-session")  # OpenSSH 9.8 runs a session in its own sshd-session binary
PTS_MAJORS = range(136, 144)  # Linux's Unix98 pty slaves (/dev/pts/N)
DEFAULT_LEASE_SECONDS = LEASE_SECONDS  # a holder record without one (an older deploy side)


def fab_task(runs_dir, now=None):
    """A sentence naming the task that holds the host lock while its lease is fresh, else None."""
    lock = os.path.join(os.path.expanduser(runs_dir), LOCK_DIR)
    try:
        with open(os.path.join(lock, LOCK_HOLDER)) as f:
            holder = json.load(f)
    except (OSError, ValueError):
        holder = {}
    if not isinstance(holder, dict):
        holder = {}
    lease = 0.0
    for name in (LOCK_LEASE, LOCK_HOLDER):
        try:
            lease = os.path.getmtime(os.path.join(lock, name))
            break
        except OSError:
            continue
    if not lease:
        return None
    try:
        limit = float(holder.get("lease_seconds") or DEFAULT_LEASE_SECONDS)
    except (TypeError, ValueError):
        limit = DEFAULT_LEASE_SECONDS
    age = (time.time() if now is None else now) - lease
    if age > limit:
        return None
    task = holder.get("task")
    return f"fab {task if isinstance(task, str) else '(a task)'} holds the host lock (lease renewed {max(age, 0):.0f} s ago)"


def _processes():
    """{pid: (comm, ppid, tty_nr, uid)} of every process /proc shows."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
            uid = os.stat(f"/proc/{entry}").st_uid
        except OSError:
            continue
        comm = text[text.find("(") + 1:text.rfind(")")]
        fields = text[text.rfind(")") + 2:].split()
        try:
            found[int(entry)] = (comm, int(fields[1]), int(fields[4]), uid)
        except (IndexError, ValueError):
            continue
    return found


def _pts(tty_nr):
    major, minor = (tty_nr >> 8) & 0xFFF, (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    return (major - PTS_MAJORS.start) * 256 + minor if major in PTS_MAJORS else None


def _user(uid):
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)


def ssh_sessions():
    """Interactive SSH logins, one "USER on pts/N" per terminal (see the module docstring)."""
    procs, me, found = _processes(), os.getpid(), {}
    for pid, (_, _, tty_nr, uid) in procs.items():
        pts = _pts(tty_nr)
        if pts is None or pid == me or pts in found:
            continue
        parent, steps = procs[pid][1], 0
        while parent > 1 and parent in procs and steps < 64:
            if procs[parent][0] in SSHD_NAMES:
                found[pts] = f"{_user(uid)} on pts/{pts}"
                break
            parent, steps = procs[parent][1], steps + 1
    return [found[k] for k in sorted(found)]


def gpu_processes():
    """(pids of the compute apps nvidia-smi lists, None); (None, None) without nvidia-smi; ([], error) when it fails."""
    if not shutil.which("nvidia-smi"):
        return None, None
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        return [], f"nvidia-smi: {e}"[:200]
    if out.returncode != 0:
        return [], f"nvidia-smi exited {out.returncode}: {(out.stderr or out.stdout).strip()}"[:200]
    return [int(line.strip()) for line in out.stdout.splitlines() if line.strip().isdigit()], None


def seen(runs_dir, wait_for, ignore_pids=()):
    """What keeps the host busy now: a list of sentences (empty: idle), and problems met on the way.
    `wait_for` names what counts besides a fab task: "ssh" (interactive logins), "gpu" (GPU processes
    other than `ignore_pids`: a stalled training's own, which hold GPU memory while doing nothing)."""
    busy, problems = [], []
    task = fab_task(runs_dir)
    if task:
        busy.append(task)
    if "ssh" in wait_for:
        sessions = ssh_sessions()
        if sessions:
            busy.append(f"ssh session open: {', '.join(sessions[:3])}" + (f" and {len(sessions) - 3} more" if len(sessions) > 3 else ""))
    if "gpu" in wait_for:
        pids, error = gpu_processes()
        pids = [p for p in pids or [] if p not in set(ignore_pids)]
        if pids:
            busy.append(f"GPU in use by pid {', '.join(map(str, pids[:5]))}" + (" ..." if len(pids) > 5 else ""))
        if error:
            problems.append(error)
    return busy, problems
