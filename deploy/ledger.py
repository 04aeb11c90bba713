"""What the laptop knows about the runs of a host: which were fetched, and is the host idle.

    record_fetch("gpu1", info)              # fetch-results: the run and its state when fetched (state dir fetched.json)
    record_fetch_on_host(conn, inv, info)   # and on the host, for autostop's guard (remote_scripts/agent_events.py)
    runs_at_risk(conn, inv, "gpu1")         # [(run, why)]: runs on the host neither fetched (since they ended) nor stored
    activity(conn, inv)                     # {"state", "run", "idle_seconds", "last_activity"}: asked over SSH
    forget("gpu1")                          # after `fab down`

`fab down` refuses to delete a host that holds a run at risk, naming it. "Stored" is the other
way a run is safe: its end is in run storage (`stored_runs`, from storage.url).
"""

import json
import os
import shlex
import time

from deploy.errors import DeployError
from deploy.hosts import rq, state_dir
from trainer.names import RUN_NAME

ENDED = {"finished", "failed", "stopped", "preempted", "vanished"}  # nothing of it runs: a fetch then has all of it
LIST_RUNS = 'cd {runs} 2>/dev/null || exit 0; for f in */config.yaml; do [ -e "$f" ] && printf "%s\\n" "${{f%/config.yaml}}"; done; exit 0'
ACTIVITY = "python3 -c {code} {runs} {session}"
ACTIVITY_CODE = """
import json, os, subprocess, sys, time
runs, session = os.path.expanduser(sys.argv[1]), sys.argv[2]
def mtime(p):
    try: return os.path.getmtime(p)
    except OSError: return None
try: current = open(os.path.join(runs, ".current")).read().strip()
except OSError: current = None
with open("/proc/uptime") as f: boot = time.time() - float(f.read().split()[0])
try: alive = subprocess.run(["tmux", "has-session", "-t", "=" + session], capture_output=True).returncode == 0
except OSError: alive = False  # no tmux yet (a new host): nothing trains
ended = mtime(os.path.join(runs, current, "exit.json")) if current and "/" not in current else None
print(json.dumps({"now": time.time(), "boot": boot, "heartbeat": mtime(os.path.join(runs, ".agent", "heartbeat")),
                  "run": current, "training": alive, "run_ended": ended}))
"""


def _path():
    return state_dir() / "fetched.json"


def _load():
    try:
        return json.loads(_path().read_text())
    except (OSError, ValueError):
        return {}


def _save(data):
    tmp = _path().with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, _path())


def record_fetch(label, info):
    """`fetch-results` brought run info["run"] of host `label` while it was info["state"]."""
    data = _load()
    data.setdefault(label, {})[info["run"]] = {"state": info["state"], "ended_at": (info.get("exit") or {}).get("ended_at"),
                                               "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    _save(data)


def record_fetch_on_host(conn, inv, info):
    """The host's own record of the fetch (RUNS_DIR/.agent/fetched.json): autostop then may power off a host whose
    poweroff deletes it. Best-effort: False when the host did not take it."""
    from deploy.training import script

    ended = (info.get("exit") or {}).get("ended_at") or ""
    cmd = (f"python3 {script(inv, 'agent_events.py')} fetched {rq(inv.remote['runs_dir'])} {shlex.quote(info['run'])} "
           f"{shlex.quote(info['state'])} {shlex.quote(ended)}")
    return conn.run(cmd, hide=True, warn=True, in_stream=False).ok


def forget(labels):
    data = _load()
    for label in labels:
        data.pop(label, None)
    _save(data)


def stored_runs(conn, inv):
    """Runs whose end is in run storage (their pointer is final: deploy/storage.py); none without storage, or when
    storage cannot be read (then `fab down` asks for them to be fetched, the safe side)."""
    from deploy import storage

    if not storage.enabled(inv):
        return set()
    try:
        return {name for name, pointer, _ in storage.stored_runs(storage.open_store(inv)) if pointer and pointer.get("final")}
    except DeployError:
        return set()


def runs_at_risk(conn, inv, label):
    """[(run, why)] of the runs on the host that `fab down` would lose."""
    from deploy.training import run_state

    out = conn.run(LIST_RUNS.format(runs=rq(inv.remote["runs_dir"])), hide=True, warn=True, in_stream=False)
    if out.failed:
        raise DeployError(f"Could not list the runs on {label}: {(out.stderr or out.stdout).strip()[-300:]}")
    names = [n for n in out.stdout.split() if RUN_NAME.fullmatch(n)]
    if not names:
        return []
    current = run_state(conn, inv, log_lines=0)
    fetched, stored = _load().get(label, {}), stored_runs(conn, inv)
    risky = []
    for name in names:
        record = fetched.get(name)
        state = current["state"] if name == current.get("run") else None
        if name in stored:
            continue
        if state in ("starting", "running"):
            risky.append((name, f"is {state} now"))
        elif record is None:
            risky.append((name, "was never fetched"))
        elif record["state"] not in ENDED:
            risky.append((name, f"was fetched while it was {record['state']}: fetch it again"))
        elif state is not None and (current.get("exit") or {}).get("ended_at") != record.get("ended_at"):
            risky.append((name, "changed since it was fetched (resumed?): fetch it again"))
    return risky


def activity(conn, inv):
    """The host's own view: its current run, whether a training runs, and seconds since the last activity
    (the latest of: a fab task's heartbeat, the end of the current run, the boot)."""
    cmd = ACTIVITY.format(code=shlex.quote(ACTIVITY_CODE), runs=rq(inv.remote["runs_dir"]), session=shlex.quote(inv.tmux_session))
    out = conn.run(cmd, hide=True, warn=True, in_stream=False, timeout=30)
    try:
        seen = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise DeployError(f"the host did not say what it does: {(out.stderr or out.stdout).strip()[-300:]}") from None
    last = max(t for t in (seen["heartbeat"], seen["run_ended"], seen["boot"]) if t is not None)
    return {"run": seen["run"], "training": seen["training"], "idle_seconds": None if seen["training"] else seen["now"] - last,
            "last_activity": last}
