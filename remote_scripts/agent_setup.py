"""The host agent set up: its settings merged, its crontab lines kept in step, the agent started (host_agent.py's
configure and boot commands). Standard library only.

    outcome = configure(runs_dir, changes)   # {ok, settings, boot, started, agent_pid} or {ok: False, message}
    pid = start(runs_dir)                    # the agent started, detached; None when one runs already
"""

import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import time

import run_format
from host_files import agent_dir, agent_running, files, read_json, read_settings

AGENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), run_format.AGENT_SCRIPT)  # what `start` and the crontab run
POWEROFF = "sudo -n /sbin/poweroff"  # the default autostop command
BOOT_MARK = "# facenet-deploy host agent"


def start(runs_dir, wait_seconds=10):
    """Start the agent, detached from this SSH session, and wait until it is up (it holds its lock and has
    written its pid), so that whoever ends this host's processes next sees it; returns its pid, or None when
    one runs already (or another agent took the lock first)."""
    if agent_running(runs_dir):
        return None
    try:
        out = open(files(runs_dir)["agent.log"], "a")
    except OSError:  # a full disk without an inode for the log: start it anyway
        out = subprocess.DEVNULL
    try:
        proc = subprocess.Popen([sys.executable, AGENT, "run", runs_dir], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True, cwd="/")
    finally:
        if out is not subprocess.DEVNULL:
            out.close()
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline and proc.poll() is None:  # exited: another agent holds the lock
        if (read_json(files(runs_dir)["state.json"]) or {}).get("pid") == proc.pid:
            return proc.pid
        time.sleep(0.02)
    return proc.pid if proc.poll() is None else None


def boot_entry(runs_dir, armed):
    """Keep (or drop) the agent's lines in the user's crontab, @reboot and every minute (`boot` starts
    the agent unless it runs; its lock keeps it to one); returns a sentence about it."""
    if not shutil.which("crontab"):
        return ("not re-armed after a reboot, nor restarted if it stops: the host has no crontab (install cron); "
                "arm it again after a reboot")
    cron = lambda text: text.replace("%", "\\%")  # noqa: E731 - cron turns a bare % into a newline
    mark = cron(f"{BOOT_MARK} {shlex.quote(runs_dir)}")
    command = cron(shlex.join([sys.executable, AGENT, "boot", runs_dir]))
    old = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
    lines = [x for x in (old.stdout.splitlines() if old.returncode == 0 else []) if not x.endswith(mark)]
    if armed:
        lines += [f"@reboot {command} {mark}", f"* * * * * {command} {mark}"]
    out = subprocess.run(["crontab", "-"], input="".join(x + "\n" for x in lines), capture_output=True, text=True)
    if out.returncode != 0:
        return f"not re-armed after a reboot: crontab failed: {(out.stderr or out.stdout).strip()[:200]}"
    return ("re-armed at every boot and restarted within a minute if it stops (@reboot and every-minute lines in the "
            "user's crontab)" if armed else "boot entry removed")


def can_sudo():
    if os.geteuid() == 0:
        return True
    try:
        return subprocess.run(["sudo", "-n", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def configure(runs_dir, changes):
    """Merge `changes` into settings.json, keep the boot entry in step, start the agent; returns the outcome."""
    os.makedirs(agent_dir(runs_dir), exist_ok=True)
    settings = read_settings(runs_dir)
    if changes.get("notify_webhook") and changes["notify_webhook"] != settings.get("notify_webhook"):
        changes = {**changes, "notify_since": time.time()}  # events from now on: not the end of an old run
    if changes.get("autostop"):
        auto = {"command": POWEROFF, **changes["autostop"], "armed_at": time.time()}
        if auto["command"] == POWEROFF and not can_sudo():
            user = pwd.getpwuid(os.geteuid()).pw_name
            return {"ok": False, "message": f"autostop cannot power the host off: `sudo -n` asks for a password for {user}. "
                                            "Allow passwordless sudo for /sbin/poweroff, or set autostop.command in the inventory."}
        changes = {**changes, "autostop": auto}
    if (changes.get("budget") or {}).get("command") == POWEROFF and not can_sudo():
        user = pwd.getpwuid(os.geteuid()).pw_name
        return {"ok": False, "message": f"the budget cap cannot power the host off: `sudo -n` asks for a password for {user}. "
                                        "Allow passwordless sudo for /sbin/poweroff, or set autostop.command in the inventory."}
    settings.update(changes)
    run_format.write_atomic(files(runs_dir)["settings.json"], json.dumps(settings), mode=0o600)  # the webhook URL is a secret
    outcome = {"ok": True, "settings": settings}
    if "autostop" in changes or "budget" in changes:
        outcome["boot"] = boot_entry(runs_dir, bool(settings["autostop"] or settings.get("budget")))
    pid = start(runs_dir)
    outcome.update(started=pid is not None, agent_pid=pid)
    return outcome
