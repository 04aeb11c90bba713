"""The host's files, read the one way: a run's and the host agent's (standard library only); the agent's writes.

    read_json(path)                       # the parsed file, or None when it is missing or torn
    read_current(runs_dir)                # the current run's name (RUNS_DIR/.current)
    current(runs_dir)                     # (name, run_dir) of the current run, when its name is one
    read_launch(run_dir), exit_record(run_dir)
    running_run(runs_dir, session)        # (name, run_dir) while a process of the current run lives
    alive_without_group(launch, session_up)   # a run launched before launch.json held a process group: its tmux session
    stalled_since(run_dir, stall_seconds) # when a live run stopped rewriting its status.json
    view(runs_dir)                        # the host agent as the monitor shows it
    save(path, record), log(runs_dir, line)   # best-effort writes: a JSON file (atomic), a line in agent.log

run_state.py (the run's state and records) and host_agent.py (autostop, spot notices) both read
these files; this module is their one reader, below both, so neither imports the other for them. The
names of the files, the run-name pattern and the agent's defaults belong to run_format.py.
A run's files: RUNS_DIR/.current names the current run; RUN_DIR/launch.json its launch (process
group, launch id); RUN_DIR/exits/<launch id>.json each launch's exit record (exit.json links to the
current one); RUN_DIR/status.json the trainer's progress. The agent's, in RUNS_DIR/.agent/:
settings.json, heartbeat, state.json, fired.json, budget.json, agent.log, agent.lock (see host_agent.py).
"""

import json
import os
import subprocess
import time

from liveness import live_processes
from run_format import (
    AGENT_DEFAULTS,
    AGENT_DIR,
    AGENT_FILES,
    AGENT_SCRIPT,
    CURRENT,
    EXIT,
    EXITS,
    LAUNCH,
    LAUNCH_ID,
    RUN_NAME,
    STATUS,
    WAIT_FOR,
    stall_threshold,
    write_atomic,
)

# --- reading and writing ------------------------------------------------------------------

def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def mtime(path):
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0.0


def save(path, record):
    """Write a JSON file atomically; False (and nothing left behind) when the disk refuses."""
    try:
        write_atomic(path, json.dumps(record))
        return True
    except OSError:
        return False


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())


def iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t)) if t else None


# --- a run's files -----------------------------------------------------------------------

def read_current(runs_dir):
    try:
        with open(os.path.join(os.path.expanduser(runs_dir), CURRENT)) as f:
            return f.read().strip() or None
    except OSError:
        return None


def current(runs_dir):
    """(name, run_dir) of the current run, or None (no run, or a name that is not one)."""
    name = read_current(runs_dir)
    if name is None or not RUN_NAME.fullmatch(name):
        return None
    return name, os.path.join(os.path.expanduser(runs_dir), name)


def read_launch(run_dir):
    launch = read_json(os.path.join(run_dir, LAUNCH))
    return launch if isinstance(launch, dict) else {}


def exit_path(run_dir, launch):
    """Where the exit record of the launch in `launch` is: exits/<launch id>.json, or exit.json for a
    run launched before launch ids; None for a launch id that is not a plain name."""
    launch_id = launch.get("launch_id")
    if launch_id is None:
        return os.path.join(run_dir, EXIT)
    if not isinstance(launch_id, str) or not LAUNCH_ID.fullmatch(launch_id):
        return None
    return os.path.join(run_dir, EXITS, f"{launch_id}.json")


def exit_record(run_dir, launch=None):
    """The exit record of the run's current launch (launch.json), or None while it has none."""
    launch = read_launch(run_dir) if launch is None else launch
    path = exit_path(run_dir, launch)
    record = read_json(path) if path else None
    return record if isinstance(record, dict) else None


def session_alive(session):
    try:
        return subprocess.run(["tmux", "has-session", "-t", f"={session}"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def progress(run_dir, status, stall_seconds=None, runs_dir=None):
    """How long the run has made no progress: status.json's age (counted from the launch when that is
    later: a resumed run's status.json is old until the trainer rewrites it) against the stall
    threshold. {seconds_since_update, threshold_seconds, last_update, stalled}."""
    if stall_seconds is None and runs_dir is not None:  # e.g. monitor_training.sh on the host: the agent's setting
        stall_seconds = (read_json(os.path.join(runs_dir, AGENT_DIR, "settings.json")) or {}).get("stall_seconds")
    if stall_seconds is None:
        slowest = max([v for v in ((status or {}).get(k) for k in ("slowest_epoch_seconds", "last_epoch_seconds"))
                       if isinstance(v, (int, float))] or [0])
        stall_seconds = stall_threshold(slowest)
    last = max(mtime(os.path.join(run_dir, STATUS)), mtime(os.path.join(run_dir, LAUNCH)))
    age = max(0.0, time.time() - last)
    return {"seconds_since_update": round(age, 1), "threshold_seconds": float(stall_seconds),
            "last_update": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(last)), "stalled": age > stall_seconds}


def stalled_since(run_dir, stall_seconds=None):
    """When the run became stalled (seconds since the epoch: its last progress plus the threshold),
    or None while it progresses, has ended, or none of its processes lives (host_agent.py's autostop)."""
    launch = read_launch(run_dir)
    if not live_processes(launch) or exit_record(run_dir, launch) is not None:
        return None
    status = read_json(os.path.join(run_dir, STATUS))
    if not isinstance(status, dict) or status.get("state") not in ("starting", "running"):
        return None
    seen = progress(run_dir, status, stall_seconds)
    return time.time() - seen["seconds_since_update"] + seen["threshold_seconds"] if seen["stalled"] else None


def running_run(runs_dir, session):
    """(name, run_dir) of the current run while a process of it lives, else None. (A run launched
    before launch.json held a process group: while its tmux session lives without an exit record.)"""
    name = read_current(runs_dir)
    if name is None or not RUN_NAME.fullmatch(name):
        return None
    run_dir = os.path.join(os.path.expanduser(runs_dir), name)
    launch = read_launch(run_dir)
    if live_processes(launch):
        return name, run_dir
    ended = exit_record(run_dir, launch) is not None
    return (name, run_dir) if not ended and alive_without_group(launch, lambda: session_alive(session)) else None


def alive_without_group(launch, session_up):
    """A run launched before launch.json held a process group is alive while its tmux session lives (`session_up()`,
    asked only for such a run). The one owner of that rule: run_state.py asks it too; follow_log.sh spells it in shell."""
    return not launch.get("pgid") and bool(session_up())


# --- the host agent's files --------------------------------------------------------------

def agent_dir(runs_dir):
    return os.path.join(os.path.expanduser(runs_dir), AGENT_DIR)


def files(runs_dir):
    d = agent_dir(runs_dir)
    return {name: os.path.join(d, name) for name in AGENT_FILES}


def log(runs_dir, message):
    """A line in the agent's log. Best-effort: a full disk loses the line, never the agent."""
    try:
        with open(files(runs_dir)["agent.log"], "a") as f:
            f.write(f"{iso(time.time())} {message}\n")
    except OSError:
        pass


def read_settings(runs_dir):
    return {**AGENT_DEFAULTS, **(read_json(files(runs_dir)["settings.json"]) or {})}


def agent_running(runs_dir):
    """The agent of this runs dir is alive (its pid from state.json runs host_agent.py). Never takes
    the lock: a check that held it for an instant could make a starting agent give up."""
    pid = (read_json(files(runs_dir)["state.json"]) or {}).get("pid")
    try:
        with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
            return AGENT_SCRIPT.encode() in f.read()
    except (OSError, TypeError, ValueError):
        return False


def autostop_view(settings, state, runs_dir, running):
    """{armed, idle_seconds, command, fires_at, waiting_for_training, waiting_for} from the settings and the agent's state."""
    auto = settings.get("autostop")
    if not auto:
        return {"armed": False}
    paths = files(runs_dir)
    current = read_current(runs_dir)
    valid = current is not None and RUN_NAME.fullmatch(current)  # a name is a path: only a valid one
    ended = mtime(os.path.join(os.path.expanduser(runs_dir), current, EXIT)) if valid else 0.0
    last_activity = max(mtime(paths["heartbeat"]), ended, auto.get("armed_at", 0), state.get("started", 0),
                        state.get("training_seen", 0), state.get("activity_seen", 0))
    view = {"armed": True, "idle_seconds": auto["idle_seconds"], "command": auto["command"], "last_activity": iso(last_activity),
            "waiting_for_training": bool(running), "waiting_for": state.get("activity") or [],
            "wait_for": list(auto.get("wait_for", WAIT_FOR))}
    view["fires_at_epoch"] = None if running else last_activity + auto["idle_seconds"]
    finished, short = state.get("done"), auto.get("done_seconds")  # agent_events.done: the run's end is safe
    if finished and short and not running and max(last_activity, finished["since"]) + short < view["fires_at_epoch"]:
        view["fires_at_epoch"] = max(last_activity, finished["since"]) + short
        view["why"] = f"run {finished['run']} {finished['state']}, its end {finished['how']}: {short / 60:.3g} idle minutes"
        view["short"] = True  # the monitor says why only then: the full idle wait is what it always said
    elif not running:
        view["why"] = f"{auto['idle_seconds'] / 60:.4g} idle minutes"
    view["fires_at"] = iso(view["fires_at_epoch"])
    fired = state.get("fired") or read_json(paths["fired.json"]) or {}  # this agent's own record first: the disk may be full
    view["fired"] = fired if fired.get("after_activity") == view["last_activity"] else None  # once per idle period
    view["last_fired"] = fired or None
    view["held"] = state.get("autostop_held") if not running else None  # agent_events.autostop_hold
    return view


def view(runs_dir):
    """What the monitor shows: is the agent alive, autostop, instance, price (see run_state.collect)."""
    paths = files(runs_dir)
    if not os.path.isdir(agent_dir(runs_dir)):
        return None
    settings, state = read_settings(runs_dir), read_json(paths["state.json"]) or {}
    alive = agent_running(runs_dir)
    running = running_run(runs_dir, settings["session"])
    if running and stalled_since(running[1], settings.get("stall_seconds")):
        running = None  # stalled: autostop counts it as idle
    return {"alive": alive, "autostop": autostop_view(settings, state, runs_dir, running), "instance": state.get("instance"),
            "price_per_hour": settings.get("price_per_hour"), "metadata_probe": state.get("metadata_probe"), "budget": state.get("budget"),
            "poweroff": state.get("poweroff"), "polled_at": state.get("polled_at")}
