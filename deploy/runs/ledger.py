"""What the laptop knows about the runs of a host: which were fetched, and is the host idle.

    record_fetch("gpu1", info)              # fetch-results: the run and its state when fetched (state dir fetched.json)
    record_fetch_on_host(conn, inv, info)   # and on the host, for autostop's guard (remote_scripts/agent_events.py)
    runs_at_risk(conn, inv, "gpu1")         # [(run, why)]: runs on the host neither fetched (since they ended) nor stored
    activity(conn, inv)                     # {"run", "training", "idle_seconds", "last_activity"}: run_state.py activity
    forget("gpu1")                          # after `fab down`

`fab down` refuses to delete a host that holds a run at risk, naming it: one running now, or one
neither fetched since it ended nor stored. "Stored" means run storage (storage.url) has a final
pointer for THAT run (`stored_as`: the same start, by its latest launch or a later one), not merely
one of the same name.

What a host holds and whether it trains are asked of the host's own run state (remote_scripts/run_state.py `runs` and
`activity`), the same code that answers `fab monitor` and `fab watch`.
"""

import json
import shlex
import time

from deploy.errors import DeployError
from deploy.host.quoting import PYTHON3, rjoin, rq
from deploy.host.training import run_state, script
from deploy.paths import state_dir
from deploy.runs import storage
from trainer.names import RUN_NAME
from trainer.run_format import run_format
from trainer.storage.layout import launch_order

ENDED = set(run_format.ENDED)  # nothing of it runs: a fetch then has all of it
# A host with no code synced yet (no run_state.py) has never launched a run: nothing trains there, it holds no run, and it
# has been idle since its boot or the last fab task's heartbeat, which the shell reports without any code of ours.
NO_CODE = "echo null $(date +%s) $(cut -d' ' -f1 /proc/uptime) $(stat -c %Y {heartbeat} 2>/dev/null)"


def _host_query(inv, *args, no_code):
    """`run_state.py ARGS` on the host, quoted, or `no_code` where the code is not synced yet."""
    words = " ".join(map(rq, args))
    return f"if [ -f {script(inv, 'run_state.py')} ]; then {PYTHON3} {script(inv, 'run_state.py')} {words}; else {no_code}; fi"


def _path():
    return state_dir() / "fetched.json"


def _load():
    try:
        return json.loads(_path().read_text())
    except (OSError, ValueError):
        return {}


def _save(data):
    run_format.write_json(_path(), data, sort_keys=True)


def record_fetch(label, info):
    """`fetch-results` brought run info["run"] of host `label` while it was info["state"]."""
    data = _load()
    data.setdefault(label, {})[info["run"]] = {"state": info["state"], "ended_at": (info.get("exit") or {}).get("ended_at"),
                                               "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    _save(data)


def record_fetch_on_host(conn, inv, info):
    """The host's own record of the fetch (RUNS_DIR/.agent/fetched.json): autostop then may power off a host whose
    poweroff deletes it. Best-effort: False when the host did not take it."""
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
    out = conn.run(_host_query(inv, "runs", inv.remote["runs_dir"], no_code="echo []"), hide=True, warn=True, in_stream=False)
    try:
        runs = json.loads(out.stdout.strip().splitlines()[-1]) if out.ok else None
    except (ValueError, IndexError):
        runs = None
    if not isinstance(runs, list):
        raise DeployError(f"Could not list the runs on {label}: {(out.stderr or out.stdout).strip()[-300:]}{_old_code(out)}")
    return [r for r in runs if isinstance(r, dict) and RUN_NAME.fullmatch(str(r.get("run")))]


def runs_at_risk(conn, inv, label):
    """[(run, why)] of the runs on the host that `fab down` would lose: a run running now, else one that is neither
    fetched since it ended nor stored (storage's final pointer is this very run: stored_as)."""
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
        if state in run_format.LIVE:
            risky.append((name, f"is {state} now"))
        elif state is not None and current.get("training"):  # it has ended, its launcher is still recording its exit
            risky.append((name, f"is {state}, its processes still live"))
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
    """The host's own view (run_state.py activity): its current run, whether a training runs (a process of the run
    lives: the answer `fab monitor`, `fab down` and `fab watch` read too), and seconds since the last activity (the
    latest of: a fab task's heartbeat, the end of the current run, the boot)."""
    stall = str(inv.stall_minutes * 60) if getattr(inv, "stall_minutes", None) else ""
    heartbeat = rq(rjoin(inv.remote["runs_dir"], run_format.AGENT_DIR, "heartbeat"))
    cmd = _host_query(inv, "activity", inv.remote["runs_dir"], inv.tmux_session, stall, no_code=NO_CODE.format(heartbeat=heartbeat))
    out = conn.run(cmd, hide=True, warn=True, in_stream=False, timeout=30)
    try:
        line = out.stdout.strip().splitlines()[-1]
        seen = json.loads(line) if not line.startswith("null ") else _no_code(line)
    except (ValueError, IndexError, TypeError):
        raise DeployError(f"the host did not say what it does: {(out.stderr or out.stdout).strip()[-300:]}{_old_code(out)}") from None
    last = max(t for t in (seen["heartbeat"], seen["run_ended"], seen["boot"]) if t is not None)
    return {"run": seen["run"], "training": seen["training"], "idle_seconds": None if seen["training"] else seen["now"] - last,
            "last_activity": last}


def _old_code(out):
    """A hint when the host's run_state.py predates the subcommand asked (argparse's usage line): its code is older."""
    return " (the host's code predates this question: `fab sync-code` brings it up to date)" if "usage:" in (out.stderr or "") else ""


def _no_code(line):
    """NO_CODE's answer: `null NOW UPTIME [HEARTBEAT]`."""
    words = line.split()
    now, up = float(words[1]), float(words[2])
    return {"now": now, "boot": now - up, "heartbeat": float(words[3]) if len(words) > 3 else None, "run": None, "training": False,
            "run_ended": None}
