"""What the laptop knows about the runs of a host: which were fetched, and is the host idle.

    record_fetch("gpu1", info)              # fetch-results: the run and its state when fetched (state dir fetched.json)
    record_fetch_on_host(conn, inv, info)   # and on the host, for autostop's guard (remote_scripts/agent_events.py)
    runs_at_risk(conn, inv, "gpu1")         # [(run, why)]: runs on the host neither fetched (since they ended) nor stored
    activity(conn, inv)                     # {"state", "run", "idle_seconds", "last_activity"}: asked over SSH
    forget("gpu1")                          # after `fab down`

`fab down` refuses to delete a host that holds a run at risk, naming it: one running now, or one
neither fetched since it ended nor stored. "Stored" means run storage (storage.url) has a final
pointer for THAT run (`stored_as`: the same start, by its latest launch or a later one), not merely
one of the same name.
"""

import json
import os
import shlex
import time

from deploy.errors import DeployError
from deploy.host.quoting import rq
from deploy.paths import state_dir
from trainer.names import RUN_NAME
from trainer.storage.layout import launch_order

ENDED = {"finished", "failed", "stopped", "preempted", "vanished", "superseded"}  # nothing of it runs: a fetch then has all of it
LIST_RUNS = "python3 -c {code} {runs}"
LIST_RUNS_CODE = """
import json, os, sys
runs = os.path.expanduser(sys.argv[1])
def field(run, name, key):
    try:
        with open(os.path.join(runs, run, name)) as f: value = json.load(f)
    except (OSError, ValueError): return None
    return value.get(key) if isinstance(value, dict) else None
try: names = sorted(os.listdir(runs))
except OSError: names = []
print(json.dumps([{"run": n, "started_at": field(n, "status.json", "started_at"), "launch_id": field(n, "launch.json", "launch_id")}
                  for n in names if os.path.isfile(os.path.join(runs, n, "config.yaml"))]))
"""
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
    from deploy.host.training import script

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
    """{run name: its final pointer} of the runs whose end is in run storage (deploy/runs/storage.py); none without storage,
    or when storage cannot be read (then `fab down` asks for them to be fetched, the safe side)."""
    from deploy.runs import storage

    if not storage.enabled(inv):
        return {}
    try:
        return {name: pointer for name, pointer, _ in storage.stored_runs(storage.open_store(inv)) if pointer and pointer.get("final")}
    except DeployError:
        return {}


def stored_as(pointer, run):
    """Whether the final pointer `pointer` holds the end of the host's run `run` ({"run", "started_at", "launch_id"}):
    the same run (its status.json's started_at), written by the host's latest launch of it or by a later one (the run
    resumed elsewhere). A run of the same name begun elsewhere, or an earlier launch's end, is not it."""
    if not pointer or not pointer.get("final"):
        return False
    ours, theirs = run.get("started_at"), pointer.get("run_started_at")
    if ours and theirs and ours != theirs:
        return False  # another run of this name
    launch, stored = run.get("launch_id"), str(pointer.get("launch_id") or "")
    if launch:
        return stored == launch or bool(ours and theirs and launch_order(stored) > launch_order(launch))
    return bool(ours and theirs)  # a run from before launch ids: the same start is all there is to compare


def host_runs(conn, inv, label):
    """[{"run", "started_at", "launch_id"}] of the run folders on the host."""
    out = conn.run(LIST_RUNS.format(code=shlex.quote(LIST_RUNS_CODE), runs=rq(inv.remote["runs_dir"])), hide=True, warn=True,
                   in_stream=False)
    try:
        runs = json.loads(out.stdout.strip().splitlines()[-1]) if out.ok else None
    except (ValueError, IndexError):
        runs = None
    if not isinstance(runs, list):
        raise DeployError(f"Could not list the runs on {label}: {(out.stderr or out.stdout).strip()[-300:]}")
    return [r for r in runs if isinstance(r, dict) and RUN_NAME.fullmatch(str(r.get("run")))]


def runs_at_risk(conn, inv, label):
    """[(run, why)] of the runs on the host that `fab down` would lose: a run running now, else one that is neither
    fetched since it ended nor stored (storage's final pointer is this very run: stored_as)."""
    from deploy.host.training import run_state

    runs = host_runs(conn, inv, label)
    if not runs:
        return []
    current = run_state(conn, inv, log_lines=0)
    fetched, stored = _load().get(label, {}), stored_runs(conn, inv)
    risky = []
    for run in runs:
        name = run["run"]
        record = fetched.get(name)
        state = current["state"] if name == current.get("run") else None
        if state in ("starting", "running", "stalled"):
            risky.append((name, f"is {state} now"))
        elif stored_as(stored.get(name), run):
            continue
        elif record is None:
            risky.append((name, "was never fetched" + _not_stored(stored.get(name))))
        elif record["state"] not in ENDED:
            risky.append((name, f"was fetched while it was {record['state']}: fetch it again"))
        elif state is not None and (current.get("exit") or {}).get("ended_at") != record.get("ended_at"):
            risky.append((name, "changed since it was fetched (resumed?): fetch it again"))
    return risky


def _not_stored(pointer):
    if not pointer:
        return ""
    return (f" (storage holds another run of this name: begun {pointer.get('run_started_at') or '?'}, launch "
            f"{pointer.get('launch_id') or '?'} on {pointer.get('host') or '?'})")


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
