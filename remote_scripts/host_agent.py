#!/usr/bin/env python3
"""The host's own watcher, so that the laptop may be closed: autostop and spot preemption.

    python3 host_agent.py configure RUNS_DIR SETTINGS_JSON   # the deploy side: merge settings, start the agent; prints JSON
    python3 host_agent.py boot RUNS_DIR                      # the crontab's lines (@reboot, every minute): start it if armed and not running
    python3 host_agent.py run RUNS_DIR                       # the agent itself (one per runs dir, held by a lock)

Standard library only (it runs with the system python3). Its files are in RUNS_DIR/.agent/:

    settings.json   what the deploy side set: session, autostop {idle_seconds, command, wait_for, done_seconds},
                    metadata_url (null: off), metadata_explicit, poll_seconds, spot_grace_seconds, price_per_hour,
                    stall_seconds (null: run_state's default), budget
    heartbeat       touched by every `fab` task on this host, at its start and every half minute
    state.json      the agent's view, rewritten every poll: pid, EC2 instance (type, spot), autostop,
                    activity (what it last saw keeping the host busy), metadata_probe and the
                    metadata requests it made (count, last URLs)
    fired.json      when autostop last fired, its command and exit code
    agent.log

Autostop fires once when no training runs and nothing happened for idle_seconds, counted from the
latest of: the heartbeat, the last time the agent saw a training run, the end of the current run,
the last time it saw activity (host_activity.py: a fab task holding the host lock, an
interactive SSH login, a process on the GPU), the agent's start (so a rebooted host gets the
whole idle time) and the arming. Once the current run finished or failed and its end is stored or
fetched (autostop_guard.done), it waits only done_seconds (when shorter), counted from the latest of
those and the round that first saw the end safe (a restarted agent counts the grace again).
It runs the command first and records it after (fired.json),
so a full disk cannot keep it from firing; no OSError ends the agent, and the crontab restarts
it every minute if it ends anyway. A stalled run (host_files.stalled_since: its processes live,
its status.json is not rewritten) counts as idle from when it stalled, and the log says so; its
own processes on the GPU do not count as activity.

On EC2 (IMDSv2 answers at metadata_url) it polls spot/instance-action; on a notice it marks the
running training preempted and stops it (run_stop.stop), keeping the backup of the last epoch;
with run storage it then waits (until shortly before the notice's time) for the run's uploader to
store that end, and records what was stored (state.json preempted.stored).
When to ask the metadata service, and when to stop asking: ec2_metadata.py.

With run storage, the current launch's uploader is started again when it died before it was done
(agent_uploader.py). A fenced launch (RUN/fenced.json: the run moved on) is neither revived nor notified.

Its other jobs, in the modules beside it: agent_setup.py (configure, boot: settings, crontab, start),
agent_budget.py (the budget cap), agent_events.py (notifications, the poweroff's plan), autostop_guard.py
(when autostop must hold back), agent_uploader.py (the run's uploader).
"""

import fcntl
import json
import os
import subprocess
import sys
import time

import agent_budget
import agent_events
import agent_setup
import agent_uploader
import autostop_guard
import host_activity
import host_files
import run_format
from agent_setup import configure, start
from agent_uploader import MAX_UPLOADER_RESTARTS, revive_uploader, store_before_the_end  # noqa: F401 - MAX_UPLOADER_RESTARTS: this module's API
from ec2_metadata import probe_instance, spot_notice
from host_files import agent_dir, autostop_view, files, iso, log, mtime, read_json, read_launch, read_settings, save
from liveness import live_processes
from run_format import POLL_SECONDS, STATUS, WAIT_FOR
from run_stop import stop

HERE = os.path.abspath(__file__)
# the agent's code: a change to any of these restarts it
SOURCES = (HERE, host_files.__file__, agent_budget.__file__, agent_setup.__file__, agent_uploader.__file__)


# --- autostop -----------------------------------------------------------------------------

def fire(runs_dir, view, state):
    """Run the command first (nothing written before it: the disk may be full), then record it, best-effort;
    state.json keeps the record too, and a record the disk refused is written when it takes it again."""
    record = {"fired_at": iso(time.time()), "after_activity": view["last_activity"], "command": view["command"]}
    state["fired"] = record  # in memory: once per idle period, whatever the disk says
    agent_events.notify_host(runs_dir, read_settings(runs_dir), f"autostop:{view['last_activity']}", "autostop",
                             f"autostop fired: idle since {view['last_activity']}; running `{view['command']}`", command=view["command"])
    try:
        out = subprocess.run(["sh", "-c", view["command"]], capture_output=True, text=True, timeout=120)
        record.update(exit_code=out.returncode, output=(out.stdout + out.stderr)[-2000:])
    except (OSError, subprocess.SubprocessError) as e:
        record.update(exit_code=None, output=str(e))
    state["fired_saved"] = save(files(runs_dir)["fired.json"], record)
    log(runs_dir, f"autostop: idle since {view['last_activity']}; ran {view['command']!r}, which exited {record['exit_code']}")


# --- the agent loop -----------------------------------------------------------------------

def lock(runs_dir):
    """The agent's lock (held for its life), or None if another agent holds it."""
    f = open(files(runs_dir)["agent.lock"], "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


def poll_once(runs_dir, settings, state):
    """One round: instance, spot notice, activity, autostop. Updates and returns `state`."""
    now = time.time()
    url = settings["metadata_url"]
    probe_instance(settings, state, now)
    running = host_files.running_run(runs_dir, settings["session"])
    stalled = host_files.stalled_since(running[1], settings.get("stall_seconds")) if running else None
    if running and not stalled:
        state["training_seen"] = now
    if stalled and state.get("stalled") != [running[0], iso(stalled)]:
        state["stalled"] = [running[0], iso(stalled)]
        log(runs_dir, f"run {running[0]} stalled at {iso(stalled)} (its processes live, its status.json is not rewritten): "
                      "autostop counts it as idle")
    if running and url and (state.get("instance") or {}).get("ec2"):
        try:
            notice = spot_notice(state, url)
        except (OSError, ValueError) as e:
            notice, state["spot_error"] = None, f"{type(e).__name__}: {e}"[:200]
        if notice:
            stored = preempt(runs_dir, settings, running, notice)
            state["preempted"] = {"run": running[0], "notice": notice, "at": iso(now), "stored": stored}
    state["budget"] = agent_budget.check_budget(runs_dir, settings, running, now)
    if running and (state["budget"] or {}).get("fired_at") == iso(now):  # the cap stopped it just now
        running = host_files.running_run(runs_dir, settings["session"])
        stalled = None
    auto = settings.get("autostop")
    ignore = set(live_processes(read_launch(running[1]))) if stalled else set()  # a stalled run is idle
    busy, problems = host_activity.seen(runs_dir, auto.get("wait_for", WAIT_FOR), ignore_pids=ignore) if auto else ([], [])
    state.update(activity=busy, activity_problems=problems)
    if busy:
        state["activity_seen"] = now
    waiting_for = None if stalled else running
    state["done"] = autostop_guard.done(runs_dir, state) if auto else None  # the run's end is safe: autostop's short wait
    view = autostop_view(settings, state, runs_dir, waiting_for)
    due = view["armed"] and not waiting_for and now >= view["fires_at_epoch"] and not view["fired"]
    state["autostop_held"] = hold(runs_dir, settings, state) if due else None
    if due and not state["autostop_held"]:
        fire(runs_dir, view, state)
    elif state.get("fired") and state.get("fired_saved") is False:  # the disk refused the record: again
        state["fired_saved"] = save(files(runs_dir)["fired.json"], state["fired"])
    state["uploader"] = revive_uploader(runs_dir) or state.get("uploader")
    state["poweroff"] = agent_events.poweroff_plan(runs_dir, settings, state, view, now)  # said by monitor, notifications, watch
    agent_events.notify_run(runs_dir, settings, running, stalled, view, state)
    state.update(polled_at=iso(now), autostop=autostop_view(settings, state, runs_dir, waiting_for), running=running[0] if running else None)
    return state


def hold(runs_dir, settings, state):
    """Autostop is due: why it must wait (a poweroff would delete an unfetched, unstored run: agent_events), or None."""
    held = autostop_guard.autostop_hold(runs_dir, settings, state)
    if held and state.get("autostop_held") != held:
        log(runs_dir, f"autostop held back: {held}")
        agent_events.notify_host(runs_dir, settings, f"autostop-held:{held}", "autostop-held", f"autostop held back: {held}")
    return held


def preempt(runs_dir, settings, running, notice):
    """Record the notice in the run dir (run_records puts it into the exit record), then stop the training."""
    name, run_dir = running
    log(runs_dir, f"spot interruption notice {json.dumps(notice)}: stopping run {name}")
    run_format.write_atomic(os.path.join(run_dir, run_format.PREEMPT), json.dumps({"notice": notice, "received_at": iso(time.time())}))
    launch_id, status = read_launch(run_dir).get("launch_id") or "legacy", read_json(os.path.join(run_dir, STATUS))
    code, lines = stop(run_dir, settings["session"], int(settings["spot_grace_seconds"]),
                        reason=f"preempted: spot interruption notice ({notice.get('action')} at {notice.get('time')})")
    log(runs_dir, f"stop exited {code}: {' | '.join(lines)}")
    agent_events.notify_preempted(runs_dir, settings, name, run_dir, launch_id, notice, status)  # after the stop: a webhook never delays it
    return store_before_the_end(runs_dir, run_dir, notice)


KEPT_ACROSS_RESTARTS = ("instance_url", "metadata_explicit", "metadata_probe", "metadata_requests", "metadata_urls")


def run(runs_dir):
    """The agent's loop. No error ends it: a round that fails is logged (best-effort) and the next one comes."""
    try:
        held = lock(runs_dir)
    except OSError as e:  # e.g. no inode left for the lock file: cron tries again in a minute
        print(f"host agent: cannot open its lock in {agent_dir(runs_dir)}: {e}", file=sys.stderr)
        return 1
    if held is None:
        return 0  # another agent watches this runs dir
    source = [mtime(path) for path in SOURCES]
    state = {"pid": os.getpid(), "started": time.time(), "started_at": iso(time.time()), "metadata_requests": 0, "metadata_urls": []}
    old = read_json(files(runs_dir)["state.json"]) or {}
    if old.get("pid") == os.getpid():  # re-executed after a code sync: keep what it had seen
        state.update({k: old[k] for k in ("started", "started_at", "training_seen", "activity_seen", "fired", "fired_saved") if k in old})
    if old.get("metadata_probe", "").startswith("stopped"):  # "not EC2" stays said, for these settings
        state.update({k: old[k] for k in KEPT_ACROSS_RESTARTS if k in old})
    else:
        state.update({k: old[k] for k in ("metadata_requests", "metadata_urls") if k in old})
    save(files(runs_dir)["state.json"], state)
    log(runs_dir, f"agent started (pid {os.getpid()})")
    while True:
        pause = POLL_SECONDS
        try:
            settings = read_settings(runs_dir)
            pause = max(0.2, float(settings["poll_seconds"]))
            poll_once(runs_dir, settings, state)
        except Exception as e:  # noqa: BLE001 - the watcher must outlive one bad round
            log(runs_dir, f"poll failed: {type(e).__name__}: {e}")
        save(files(runs_dir)["state.json"], state)
        time.sleep(pause)
        if [mtime(path) for path in SOURCES] != source:  # `fab sync-code` brought a new version: continue as it
            log(runs_dir, "code changed: restarting")
            held.close()
            os.execv(sys.executable, [sys.executable, HERE, "run", runs_dir])


def main(argv):
    command, runs_dir = argv[0], os.path.expanduser(argv[1])
    if command == "run":
        return run(runs_dir)
    if command == "boot":
        settings = read_settings(runs_dir)
        if settings.get("autostop") or settings.get("budget"):
            start(runs_dir)
        return 0
    if command == "configure":
        try:
            outcome = configure(runs_dir, json.loads(argv[2]))
        except OSError as e:  # e.g. a full disk: settings.json cannot be written
            outcome = {"ok": False, "message": f"The host agent could not write its settings in {agent_dir(runs_dir)}: {e}"}
        print(json.dumps(outcome))
        return 0 if outcome["ok"] else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
