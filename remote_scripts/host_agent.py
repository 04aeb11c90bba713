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
fetched (agent_events.done), it waits only done_seconds (when shorter), counted from the latest of
those and the round that first saw the end safe (a restarted agent counts the grace again).
It runs the command first and records it after (fired.json),
so a full disk cannot keep it from firing; no OSError ends the agent, and the crontab restarts
it every minute if it ends anyway. A stalled run (run_state.stalled_since: its processes live,
its status.json is not rewritten) counts as idle from when it stalled, and the log says so; its
own processes on the GPU do not count as activity.

On EC2 (IMDSv2 answers at metadata_url) it polls spot/instance-action; on a notice it marks the
running training preempted and stops it (run_state.stop), keeping the backup of the last epoch;
with run storage it then waits (until shortly before the notice's time) for the run's uploader to
store that end, and records what was stored (state.json preempted.stored).
When to ask the metadata service, and when to stop asking: ec2_metadata.py.

With run storage, the current launch's uploader (RUN/storage.json) is started again when it died before it was
done (a kill, the OOM killer), at most MAX_UPLOADER_RESTARTS times a launch, and agent.log says so; the monitor
shows the count. A fenced launch (RUN/fenced.json: the run moved on) is neither revived nor notified.
"""

import calendar
import fcntl
import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import time

import agent_events
import host_activity
import host_files
import run_format
import run_state
import storage_state
from ec2_metadata import probe_instance, spot_notice
from host_files import agent_dir, agent_running, autostop_view, files, iso, mtime, read_settings
from run_format import POLL_SECONDS, STATUS, WAIT_FOR

HERE = os.path.abspath(__file__)
MAX_UPLOADER_RESTARTS = 5  # a launch's uploader started again at most this often: one that dies every time is said, not looped
SOURCES = (HERE, host_files.__file__)  # the agent's code: a change to either restarts it
POWEROFF = "sudo -n /sbin/poweroff"  # the default autostop command
BOOT_MARK = "# facenet-deploy host agent"


def log(runs_dir, message):
    """Best-effort: a full disk loses the line, never the agent."""
    try:
        with open(files(runs_dir)["agent.log"], "a") as f:
            f.write(f"{iso(time.time())} {message}\n")
    except OSError:
        pass


def save(path, record):
    """Write a JSON file atomically; False (and nothing left behind) when the disk refuses."""
    try:
        run_format.write_atomic(path, json.dumps(record))
        return True
    except OSError:
        return False


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


# --- the budget cap (launch.max_hours) ------------------------------------------------------

def notify(runs_dir, event, message, key):
    """Tell the user `message`: the agent's log, and the webhook (notify.webhook) once per `key`."""
    log(runs_dir, f"notify {event}: {message}")
    agent_events.notify_host(runs_dir, read_settings(runs_dir), key, event, message)


def check_budget(runs_dir, settings, running, now):
    """The budget cap: warn `warn_seconds` before the deadline, then at the deadline stop the training
    (its backup is kept) and run the command (power off), whatever the host is doing. Each fires once
    per deadline (budget.json keeps what happened): a host started again by hand is not capped again.
    Returns the cap's view for the state file, or None when there is no cap."""
    budget = settings.get("budget")
    if not budget:
        return None
    path = files(runs_dir)["budget.json"]
    record = run_state.read_json(path) or {}
    if record.get("deadline") != budget["deadline"]:
        record = {"deadline": budget["deadline"]}
    deadline, warn = budget["deadline"], budget.get("warn_seconds", 900)
    if now >= deadline - warn and "warned_at" not in record and now < deadline:
        minutes = max(0, round((deadline - now) / 60))
        record["warning"] = (f"budget cap: this host powers off at {iso(deadline)} ({budget.get('max_hours')} h after launch), "
                             f"in about {minutes} min" + (f"; training {running[0]} is stopped first (its backup is kept)" if running else ""))
        record["warned_at"] = iso(now)
        save(path, record)
        notify(runs_dir, "budget-warning", record["warning"], f"budget-warning:{deadline}")
    if now >= deadline and "fired_at" not in record:
        record["fired_at"] = iso(now)
        save(path, record)  # before acting: a crash in between must not fire twice (best-effort: a full disk must not stop the cap)
        log(runs_dir, f"budget cap reached ({budget.get('max_hours')} h after launch): "
                      + (f"stopping training {running[0]}, then " if running else "") + f"running {budget['command']!r}")
        if running:
            code, lines = run_state.stop(running[1], settings["session"], int(settings["spot_grace_seconds"]),
                                         reason=f"stopped by the budget cap (launch.max_hours, {budget.get('max_hours')} h)")
            log(runs_dir, f"stop exited {code}: {' | '.join(lines)}")
        # after the stop, before the poweroff (nothing is sent after it); a POST has 5 s in all (notify.py)
        notify(runs_dir, "budget-cap", f"budget cap reached ({budget.get('max_hours')} h after launch): "
               + (f"stopped training {running[0]} (its backup is kept); " if running else "") + f"running `{budget['command']}`",
               f"budget-cap:{deadline}")
        try:
            out = subprocess.run(["sh", "-c", budget["command"]], capture_output=True, text=True, timeout=120)
            record.update(exit_code=out.returncode, output=(out.stdout + out.stderr)[-2000:])
        except (OSError, subprocess.SubprocessError) as e:
            record.update(exit_code=None, output=str(e))
        save(path, record)
        log(runs_dir, f"budget cap: command exited {record['exit_code']}")
    return {**record, "deadline": iso(deadline), "max_hours": budget.get("max_hours"), "command": budget["command"]}


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
    state["budget"] = check_budget(runs_dir, settings, running, now)
    if running and (state["budget"] or {}).get("fired_at") == iso(now):  # the cap stopped it just now
        running = host_files.running_run(runs_dir, settings["session"])
        stalled = None
    auto = settings.get("autostop")
    ignore = set(run_state.live_processes(run_state.read_launch(running[1]))) if stalled else set()  # a stalled run is idle
    busy, problems = host_activity.seen(runs_dir, auto.get("wait_for", WAIT_FOR), ignore_pids=ignore) if auto else ([], [])
    state.update(activity=busy, activity_problems=problems)
    if busy:
        state["activity_seen"] = now
    waiting_for = None if stalled else running
    state["done"] = agent_events.done(runs_dir, state) if auto else None  # the run's end is safe: autostop's short wait
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
    held = agent_events.autostop_hold(runs_dir, settings, state)
    if held and state.get("autostop_held") != held:
        log(runs_dir, f"autostop held back: {held}")
        agent_events.notify_host(runs_dir, settings, f"autostop-held:{held}", "autostop-held", f"autostop held back: {held}")
    return held


def preempt(runs_dir, settings, running, notice):
    """Record the notice in the run dir (run_state puts it into the exit record), then stop the training."""
    name, run_dir = running
    log(runs_dir, f"spot interruption notice {json.dumps(notice)}: stopping run {name}")
    run_format.write_atomic(os.path.join(run_dir, run_format.PREEMPT), json.dumps({"notice": notice, "received_at": iso(time.time())}))
    launch_id, status = run_state.read_launch(run_dir).get("launch_id") or "legacy", run_state.read_json(os.path.join(run_dir, STATUS))
    code, lines = run_state.stop(run_dir, settings["session"], int(settings["spot_grace_seconds"]),
                                 reason=f"preempted: spot interruption notice ({notice.get('action')} at {notice.get('time')})")
    log(runs_dir, f"stop exited {code}: {' | '.join(lines)}")
    agent_events.notify_preempted(runs_dir, settings, name, run_dir, launch_id, notice, status)  # after the stop: a webhook never delays it
    return store_before_the_end(runs_dir, run_dir, notice)


def store_before_the_end(runs_dir, run_dir, notice):
    """With run storage: wait, until 5 s before the notice's time (at least 10 s), for the run's uploader to store
    the stopped run's last epoch; returns what it stored ({epoch, state, final, at}) or None."""
    try:
        ends = calendar.timegm(time.strptime(notice.get("time", ""), "%Y-%m-%dT%H:%M:%SZ"))
    except (TypeError, ValueError):
        ends = time.time() + 30
    record = storage_state.wait_stored(run_dir, max(10.0, ends - 5 - time.time()))
    if record is None:
        return None
    stored = record.get("stored") or {}
    log(runs_dir, f"storage: {'stored the run end' if stored.get('final') else 'did NOT store the run end'}: "
                  f"epoch {stored.get('epoch')} ({stored.get('state')}) at {stored.get('at')}; uploader {record.get('state')}")
    return {k: stored.get(k) for k in ("epoch", "state", "final", "at")}


KEPT_ACROSS_RESTARTS = ("instance_url", "metadata_explicit", "metadata_probe", "metadata_requests", "metadata_urls")


def revive_uploader(runs_dir):
    """Start the current launch's uploader again when it died before it was done; returns what was done (a dict for
    state.json) or None when nothing was to do."""
    found = agent_events.current(runs_dir)
    if found is None:
        return None
    run, run_dir = found
    record = storage_state.read(run_dir)
    launch = host_files.read_launch(run_dir)
    launch_id = launch.get("launch_id")
    if (not record or record.get("done") or not launch_id or record.get("launch_id") != launch_id
            or storage_state.alive(record.get("pid")) or run_state.fenced(run_dir, launch_id)):
        return None
    if record.get("state") in ("waiting", "starting", "restarting") and time.time() - (record.get("updated_epoch_seconds") or 0) < 30:
        return None  # just started: a moment from writing its own record
    settings, python, cwd = record.get("settings"), record.get("python"), record.get("cwd")
    restarts = int(record.get("restarts") or 0)
    if not isinstance(settings, dict) or not python or not cwd:
        return None  # an uploader of an older version: it did not say how to start it again
    if restarts >= MAX_UPLOADER_RESTARTS:
        if record.get("state") != "abandoned":
            record.update(state="abandoned", done=True, abandoned=f"died {restarts + 1} times; not started again")
            run_format.write_atomic(os.path.join(run_dir, storage_state.RECORD), json.dumps(record))
            log(runs_dir, f"uploader of run {run} (launch {launch_id}) died again after {restarts} restarts: not started again; "
                          "storage keeps its last stored epoch (see the run's storage.log)")
        return {"run": run, "launch_id": launch_id, "abandoned_at": iso(time.time())}
    record.update(restarts=restarts + 1, state="restarting", pid=None, updated_epoch_seconds=time.time())  # read by the new uploader
    run_format.write_atomic(os.path.join(run_dir, storage_state.RECORD), json.dumps(record))
    env = {**os.environ, "FACENET_STORAGE": json.dumps(settings), "PYTHONUNBUFFERED": "1"}
    with open(os.path.join(run_dir, "storage.log"), "a") as out:
        proc = subprocess.Popen([python, "-m", "trainer.storage.uploader", run_dir, launch_id], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    log(runs_dir, f"uploader of run {run} (launch {launch_id}) was not running (pid {record.get('pid')}, state {record.get('state')}): "
                  f"started again as pid {proc.pid} (restart {restarts + 1} of at most {MAX_UPLOADER_RESTARTS})")
    return {"run": run, "launch_id": launch_id, "pid": proc.pid, "restarts": restarts + 1, "at": iso(time.time())}


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
    old = run_state.read_json(files(runs_dir)["state.json"]) or {}
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
        proc = subprocess.Popen([sys.executable, HERE, "run", runs_dir], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True, cwd="/")
    finally:
        if out is not subprocess.DEVNULL:
            out.close()
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline and proc.poll() is None:  # exited: another agent holds the lock
        if (run_state.read_json(files(runs_dir)["state.json"]) or {}).get("pid") == proc.pid:
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
    command = cron(shlex.join([sys.executable, HERE, "boot", runs_dir]))
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
