#!/usr/bin/env python3
"""A sweep's queue on one host (`fab sweep`): the host trains its queued runs one after another, with the laptop closed.

    python3 sweep_queue.py run QUEUE_DIR            # the runner (in tmux): one training at a time, until the queue is done
    python3 sweep_queue.py put QUEUE_DIR JSON       # the laptop: the queue (its entries, the launch's words), merged in
    python3 sweep_queue.py take QUEUE_DIR RUN       # the laptop: RUN out of this queue unless this host has started it
    python3 sweep_queue.py status QUEUE_DIR         # the laptop: the runner and each queued run's state, as JSON

QUEUE_DIR is RUNS_DIR/.sweeps/<sweep>. Its files (JSON, each written atomically by run_format.write_json):

    queue.json    {"sweep", "runs_dir", "session", "launcher": [bash, launch_training.sh, VENV, PROJECT], "env": {...},
                   "entries": [{"run", "new": [trainer args], "resume": [trainer args]}]}   (the laptop writes it)
    runner.json   {"pid", "state", "current", "started": [runs this host launched], "ended": {run: state},
                   "moved": {run: {"to", "at"}}: runs another host claimed (never started here again), "waiting": why or
                   null (a claim storage cannot give), "updated_at"}

A queued run is started through the launch path of `fab train` (tmux, launch_training.sh, its launch and exit records);
what to do with it is decided from run_state.py's answer for it: finished, failed or superseded (moved on): nothing;
none (no run folder): a new run; stopped, vanished or preempted: resumed from its backup; a process of it alive: waited
for. Before each start the runner waits while any training of the host lives (one training per host at a time) and
while a `fab` task holds the host's lock (it may be changing the code, data or venv that the next run would use).

With run storage, a run is started (new or resumed) only when its claim in storage names this host (sweep_claims.py):
one the laptop moved to another host is recorded as moved, never started; one whose claim cannot be read is waited for;
a launch here whose run another host claims while it trains is fenced (it stops at its next epoch end).

A queue can be reassigned: `take` (under the queue's lock, which the runner holds while it picks and claims a run) moves
a run off this host only if this host never started it, so a run moved to another host is never started here too. A
run this host stopped on request (`fab stop`) ends the runner (state `stopped`); `fab sweep NAME` starts it again.
Standard library only (the host's python3).
"""

import fcntl
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager

import run_state
import sweep_claims
from run_format import LEASE_SECONDS, LOCK_DIR, LOCK_LEASE, RUN_NAME, write_json
from sweep_summary import summary, validation_uar  # noqa: F401 - validation_uar: part of this module's API

QUEUE, RUNNER, LOCK, RUNNER_LOCK = "queue.json", "runner.json", ".queue.lock", ".runner.lock"
POLL_SECONDS = float(os.environ.get("FACENET_SWEEP_POLL", "2"))
DONE = ("finished", "failed", "superseded")  # nothing more to do with the run on this host
RESUMABLE = ("stopped", "vanished", "preempted")


def read(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


@contextmanager
def locked(queue_dir, name=LOCK, wait=True, patience=0.0):
    """The queue's lock (fcntl, released by the kernel when the holder dies); yields False when `wait` is off and
    another process holds it for `patience` seconds (a `status` holds the runner's lock for an instant to see whether a
    runner holds it: a runner starting then must not take that for another runner)."""
    os.makedirs(queue_dir, exist_ok=True)
    with open(os.path.join(queue_dir, name), "a") as f:
        deadline = time.monotonic() + patience
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.05)
        yield True


def runner_state(queue_dir):
    return read(os.path.join(queue_dir, RUNNER), {}) or {}


def save_runner(queue_dir, state):
    state["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json(os.path.join(queue_dir, RUNNER), state)


def run_info(queue, run):
    return run_state.collect(queue["runs_dir"], queue["session"], run=run, log_lines=0, quick=True)


def pick(queue, state, busy=None):
    """(entry, "new" | "resume" | "wait") of the first run with something to do (the queued run `busy` that trains
    already, first), claimed in runner.json; (None, None) when every queued run is done, (None, "stopped") when the
    next is one this runner saw stopped on request. Under the queue's lock: `take` sees the claim."""
    entries = sorted(queue["entries"], key=lambda e: e["run"] != busy)
    for entry in entries:
        info = run_info(queue, entry["run"])
        if info["state"] in DONE and not info["training"]:
            state["ended"][entry["run"]] = info["state"]
            continue
        if not info["training"] and moved_on(info):  # fenced by the laptop: it continues on another host
            state["ended"][entry["run"]] = "superseded"
            continue
        if info["training"]:
            how = "wait"
        elif info["state"] == "none":
            how = "new"
        elif info["state"] in RESUMABLE:
            if info["state"] == "stopped" and requested_stop(info) and entry["run"] in state.get("stopped_here", []):
                return None, "stopped"
            how = "resume"
        else:
            how = "wait"  # starting, running, stalled: its launcher is at work
        if how != "wait":
            allowed = sweep_claims.may_start(queue, state, entry["run"])  # its claim in run storage names this host
            if allowed is None:
                return None, "unclaimed"
            if not allowed:  # another host holds it: never started here
                continue
        if entry["run"] not in state["started"]:
            state["started"].append(entry["run"])
        return entry, how
    return None, None


def moved_on(info):
    """The run's last launch here was fenced (`fab sweep` moved it off this host while it did not answer): never resumed
    here, whatever its state (a vanished launch that was fenced after the host came back)."""
    launch_id = (info.get("launch") or {}).get("launch_id")
    return bool(info.get("run_dir") and run_state.fenced(info["run_dir"], launch_id))


def requested_stop(info):
    return isinstance((info.get("exit") or {}).get("requested"), dict)


def host_training(queue):
    """The host's current run while a process of it lives (any run: a `fab train` of the user's too), or the host lock's
    holder while a `fab` task holds it with a fresh lease (it may be changing the code, data or venv), else None."""
    info = run_state.collect(queue["runs_dir"], queue["session"], log_lines=0, quick=True)
    if info.get("training"):
        return info["run"]
    lease = os.path.join(os.path.expanduser(queue["runs_dir"]), LOCK_DIR, LOCK_LEASE)
    try:
        fresh = time.time() - os.stat(lease).st_mtime < LEASE_SECONDS
    except OSError:
        return None
    return "the host lock (a fab task)" if fresh else None


def launch(queue, entry, how):
    """The run started as `fab train` starts it: tmux, launch_training.sh; returns the launch id it had before."""
    run_dir = os.path.join(os.path.expanduser(queue["runs_dir"]), entry["run"])
    before = (read(os.path.join(run_dir, "launch.json"), {}) or {}).get("launch_id")
    env = [f"{k}={v}" for k, v in sorted(queue.get("env", {}).items())]
    words = [*queue["launcher"][:2], *map(os.path.expanduser, queue["launcher"][2:]), run_dir, *entry[how]]
    outside = {k: v for k, v in os.environ.items() if k != "TMUX"}  # the runner itself runs in tmux
    out = subprocess.run(["tmux", "new-session", "-d", "-s", queue["session"], "env", *env, *words], check=False,
                         stdin=subprocess.DEVNULL, env=outside, capture_output=True, text=True)
    return before, out.returncode and f"tmux new-session -s {queue['session']}: {(out.stderr or out.stdout).strip()[-300:]}"


def wait_ended(queue, run, before, seconds_to_start=120):
    """Waits until the run's new launch (not `before`) has ended; its state then."""
    deadline = time.monotonic() + seconds_to_start
    while True:
        info = run_info(queue, run)
        launch_id = (info.get("launch") or {}).get("launch_id")
        started = launch_id is not None and launch_id != before
        if started and not info["training"] and info["state"] not in ("starting", "running", "stalled"):
            return info
        if started:
            sweep_claims.stand_down_if_moved(queue, run, info)
        if not started and time.monotonic() > deadline:  # the launcher never recorded itself (tmux refused, a bad venv)
            return info
        time.sleep(POLL_SECONDS)


def run_queue(queue_dir):
    """The runner: picks, starts and waits for the queue's runs one at a time, until none is left (exit 0), a run this
    host started is stopped on request (exit 3), or another runner holds the queue (exit 0 at once)."""
    with locked(queue_dir, RUNNER_LOCK, wait=False, patience=3.0) as mine:
        if not mine:
            print("another runner holds this queue", file=sys.stderr)
            return 0
        state = {**runner_state(queue_dir), "pid": os.getpid(), "state": "running", "current": None}
        state.setdefault("started", []), state.setdefault("ended", {}), state.setdefault("stopped_here", [])
        save_runner(queue_dir, state)
        state["stopped_here"] = []  # a stop asked during an earlier runner's life: this start continues the run
        while True:
            queue = read(os.path.join(queue_dir, QUEUE))
            busy = host_training(queue) if queue else None
            if queue is None or (busy and busy not in [e["run"] for e in queue["entries"]]):
                state.update(state="waiting", current=busy)  # another training of this host: one at a time
                save_runner(queue_dir, state)
                time.sleep(POLL_SECONDS)
                continue
            with locked(queue_dir):
                entry, how = pick(queue, state, busy)
                state.update(current=entry and entry["run"], state="running" if entry else how or "done")
                save_runner(queue_dir, state)
            if how == "unclaimed":  # storage cannot say which host may start it: asked again, never started unknown
                time.sleep(POLL_SECONDS)
                continue
            if entry is None:
                return 3 if how == "stopped" else 0
            code = follow_one(queue_dir, queue, state, entry, how)
            if code is not None:
                return code


def follow_one(queue_dir, queue, state, entry, how):
    """The run started (or, alive already, waited for) until it ends; None to go on, else the runner's exit code."""
    if how == "wait":
        info = wait_alive_ends(queue, entry["run"])
    else:
        before, refused = launch(queue, entry, how)
        info = run_info(queue, entry["run"]) if refused else wait_ended(queue, entry["run"], before)
        if refused or (info.get("launch") or {}).get("launch_id") in (None, before):  # said (runner.json), not looped
            reason = refused or f"the launcher never recorded a launch of {entry['run']} (see its log, {entry['run']}/launch.log)"
            state.update(state="failed to start", current=entry["run"], failed_starts=state.get("failed_starts", 0) + 1,
                         error={"run": entry["run"], "reason": reason, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            save_runner(queue_dir, state)
            return 1
        state.update(failed_starts=0, error=None)
    if info["state"] == "stopped" and requested_stop(info):
        state["stopped_here"].append(entry["run"])
    state["ended"][entry["run"]] = info["state"]
    save_runner(queue_dir, state)
    return None


def wait_alive_ends(queue, run):
    while True:
        info = run_info(queue, run)
        if not info["training"]:
            return info
        sweep_claims.stand_down_if_moved(queue, run, info)
        time.sleep(POLL_SECONDS)


def put(queue_dir, text):
    """The laptop's queue, merged in: its settings replace the old ones, its entries are added or updated in order."""
    new = json.loads(text)
    for entry in new["entries"]:
        if not RUN_NAME.fullmatch(entry["run"]):
            raise SystemExit(f"invalid run name {entry['run']!r}")
    with locked(queue_dir):
        old = read(os.path.join(queue_dir, QUEUE)) or {"entries": []}
        entries = {e["run"]: e for e in old["entries"]}
        order = [e["run"] for e in old["entries"]] + [e["run"] for e in new["entries"] if e["run"] not in entries]
        entries.update({e["run"]: e for e in new["entries"]})
        write_json(os.path.join(queue_dir, QUEUE), {**new, "entries": [entries[r] for r in order]}, mode=0o600)
    return {"ok": True, "entries": order}


def take(queue_dir, run):
    """RUN out of this queue, unless this host started it (then it stays: {"taken": false})."""
    with locked(queue_dir):
        state = runner_state(queue_dir)
        queue = read(os.path.join(queue_dir, QUEUE)) or {"entries": []}
        held = os.path.isdir(os.path.join(os.path.expanduser(queue.get("runs_dir", "")), run)) if queue.get("runs_dir") else False
        if run in state.get("started", []) or held:
            return {"taken": False, "why": "started here" if run in state.get("started", []) else "its folder is here"}
        queue["entries"] = [e for e in queue["entries"] if e["run"] != run]
        if os.path.exists(os.path.join(queue_dir, QUEUE)):
            write_json(os.path.join(queue_dir, QUEUE), queue, mode=0o600)
        return {"taken": True}


def status(queue_dir):
    queue = read(os.path.join(queue_dir, QUEUE)) or {"entries": []}
    state = runner_state(queue_dir)
    with locked(queue_dir, RUNNER_LOCK, wait=False) as free:
        alive = not free
    runs = {e["run"]: summary(run_info(queue, e["run"])) for e in queue["entries"]}
    for run, moved in (state.get("moved") or {}).items():  # claimed by another host: never started here again
        if run in runs:
            runs[run] = {**runs[run], "state": "superseded", "moved_to": moved.get("to")}
    return {"runner": {**state, "alive": alive}, "runs": runs}


def main(argv):
    if len(argv) < 2 or argv[0] not in ("run", "put", "take", "status"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    command, queue_dir = argv[0], os.path.expanduser(argv[1])
    if command == "run":
        return run_queue(queue_dir)
    result = put(queue_dir, argv[2]) if command == "put" else take(queue_dir, argv[2]) if command == "take" else status(queue_dir)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
