"""Autostop's guard: when the run's end is safe, and when a poweroff must wait (the host's disk would take an
unfetched, unstored run with it). Called by host_agent.py and agent_events.py; standard library only.

    held = autostop_hold(runs_dir, settings, state)       # None, or why autostop must not power this host off now
    state["done"] = done(runs_dir, state)                 # the run ended and its end is safe: autostop's short wait
    record_fetch(runs_dir, run, state, ended_at)          # `fab fetch-results` brought the run home (agent dir fetched.json)

Autostop holds back when a poweroff would delete the host with its disk, i.e. the host is spot
(the metadata service says so) or the inventory says its shutdown terminates it
(autostop.shutdown_terminates, or a host `fab launch` made as a one-time spot instance), while
the current run has ended (an exit record, or none and no process left: vanished) and is neither
fetched since it ended nor stored in full (storage: the final state uploaded). A preempted run is
not held for: the host goes anyway.
"""

import calendar
import json
import os
import time

import host_files
import notify
import run_format
import storage_state
from host_files import agent_dir, current
from liveness import live_processes
from run_format import ENDED, SUPERSEDED
from run_state import derive_state


def fetched_path(runs_dir):
    return os.path.join(agent_dir(runs_dir), "fetched.json")


def record_fetch(runs_dir, run, state, ended_at):
    """`fab fetch-results` brought run `run` home while it was `state` (its exit record's ended_at)."""
    path = fetched_path(runs_dir)
    data = host_files.read_json(path)
    data = data if isinstance(data, dict) else {}
    data[run] = {"state": state, "ended_at": ended_at, "fetched_at": notify.iso()}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    run_format.write_atomic(path, json.dumps(data))


def fetched(runs_dir, run, record):
    """The run was fetched after it ended (the fetch saw this exit record's end)."""
    seen = (host_files.read_json(fetched_path(runs_dir)) or {}).get(run)
    return isinstance(seen, dict) and seen.get("state") in ENDED and seen.get("ended_at") == record.get("ended_at")


def fetched_vanished(runs_dir, run, run_dir):
    """A vanished run (no exit record, so no end time) was fetched after its last change (status.json, launch.json)."""
    seen = (host_files.read_json(fetched_path(runs_dir)) or {}).get(run)
    if not isinstance(seen, dict) or seen.get("state") not in ENDED:
        return False
    try:
        at = calendar.timegm(time.strptime(str(seen.get("fetched_at")), "%Y-%m-%dT%H:%M:%S+00:00"))
    except ValueError:
        return False
    changed = max(host_files.mtime(os.path.join(run_dir, name)) for name in (run_format.STATUS, run_format.LAUNCH))
    return at >= int(changed)


def stored(run_dir, launch):
    """The run's end is in storage: this launch's uploader stored its final state (RUN/storage.json, storage_state.py)."""
    record = storage_state.read(run_dir) or {}
    return bool((record.get("stored") or {}).get("final")) and record.get("launch_id") == launch.get("launch_id")


DONE = ("finished", "failed", "superseded")  # a stopped run is the user's to continue here: autostop's full wait


def done(runs_dir, state):
    """The current run ended (finished, failed, or moved to another launch) and its end is safe, stored or fetched
    (a superseded one's result is another launch's): {run, state, how, since, key}, `since` the first round that saw
    it so; else None. Autostop then waits only autostop.done_seconds (host_files.autostop_view)."""
    found = current(runs_dir)
    if found is None:
        return None
    run, run_dir = found
    launch = host_files.read_launch(run_dir)
    record = host_files.exit_record(run_dir, launch)
    if record is None:
        return None
    status = host_files.read_json(os.path.join(run_dir, run_format.STATUS))
    status = status if isinstance(status, dict) else {}
    what = derive_state(record, False, status)
    if what not in DONE:
        return None
    worker = (status.get("distribution") or {}).get("chief") is False  # a cluster's other workers: the chief holds the result
    how = "moved to another launch" if what == "superseded" else "kept by the chief (a worker of a cluster)" if worker else \
        "stored" if stored(run_dir, launch) else "fetched" if fetched(runs_dir, run, record) else None
    if how is None:
        return None
    key = [run, launch.get("launch_id"), record.get("ended_at")]
    old = (state or {}).get("done") or {}
    since = old["since"] if old.get("key") == key and isinstance(old.get("since"), (int, float)) else time.time()
    return {"run": run, "state": what, "how": how, "since": since, "key": key}


def shutdown_deletes(settings, state):
    """Why a poweroff deletes this host (and its disk), or None."""
    if settings.get("shutdown_terminates"):
        return "its shutdown terminates it (inventory autostop.shutdown_terminates, or a one-time spot instance of `fab launch`)"
    if ((state or {}).get("instance") or {}).get("spot"):
        return "it is a spot instance"
    return None


def autostop_hold(runs_dir, settings, state):
    """Why autostop must not fire now (a sentence), or None."""
    deletes = shutdown_deletes(settings, state)
    found = current(runs_dir) if deletes else None
    if found is None:
        return None
    run, run_dir = found
    launch = host_files.read_launch(run_dir)
    record = host_files.exit_record(run_dir, launch)
    if record is None:  # no exit record: the run lives (then autostop is not due), or it vanished (reboot, kill)
        if not os.path.isdir(run_dir) or live_processes(launch) or fetched_vanished(runs_dir, run, run_dir) or stored(run_dir, launch):
            return None
        how = "vanished (no exit record, no process left)"
    elif record.get("preempted") or fetched(runs_dir, run, record) or stored(run_dir, launch) or \
            record.get("exit_code") == SUPERSEDED:  # the run continues elsewhere: nothing of it to keep here
        return None
    else:
        how = "ended"
    return (f"run {run} {how} and is neither fetched since nor stored, and a poweroff deletes this host: {deletes}. "
            "`fab fetch-results` (or storage) lets autostop fire")
