#!/usr/bin/env python3
"""The host's own watcher, so that the laptop may be closed: autostop and spot preemption.

    python3 host_agent.py configure RUNS_DIR SETTINGS_JSON   # the deploy side: merge settings, start the agent; prints JSON
    python3 host_agent.py boot RUNS_DIR                      # the @reboot crontab line: start it again if autostop is armed
    python3 host_agent.py run RUNS_DIR                       # the agent itself (one per runs dir, held by a lock)

Standard library only (it runs with the system python3). Its files are in RUNS_DIR/.agent/:

    settings.json   what the deploy side set: session, autostop {idle_seconds, command}, metadata_url,
                    poll_seconds, spot_grace_seconds, price_per_hour, stall_seconds (null: run_state's default)
    heartbeat       touched by every `fab` task on this host
    state.json      the agent's view, rewritten every poll: pid, EC2 instance (type, spot), autostop
    fired.json      when autostop last fired, its command and exit code
    agent.log

Autostop fires once when no training runs and nothing happened for idle_seconds, counted from the
latest of: the heartbeat, the last time the agent saw a training run, the end of the current run,
the agent's start (so a rebooted host gets the whole idle time) and the arming. A stalled run
(run_state.stalled_since: its processes live, its status.json is not rewritten) counts as idle from
when it stalled, and the log says so.

On EC2 (IMDSv2 answers at metadata_url) it polls spot/instance-action; on a notice it marks the
running training preempted and stops it (run_state.stop), keeping the backup of the last epoch.
"""

import fcntl
import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import run_state

HERE = os.path.abspath(__file__)
DEFAULTS = {"session": "facenet-training", "autostop": None, "metadata_url": "http://169.254.169.254",
            "poll_seconds": 5, "spot_grace_seconds": 90, "price_per_hour": None, "stall_seconds": None}
POWEROFF = "sudo -n /sbin/poweroff"  # the default autostop command
BOOT_MARK = "# facenet-deploy host agent"
INSTANCE_RECHECK_SECONDS = 600  # a host that is not on EC2 is asked again this often


def agent_dir(runs_dir):
    return os.path.join(os.path.expanduser(runs_dir), ".agent")


def files(runs_dir):
    d = agent_dir(runs_dir)
    return {name: os.path.join(d, name) for name in ("settings.json", "heartbeat", "state.json", "fired.json", "agent.log", "agent.lock")}


def mtime(path):
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0.0


def iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t)) if t else None


def log(runs_dir, message):
    with open(files(runs_dir)["agent.log"], "a") as f:
        f.write(f"{iso(time.time())} {message}\n")


# --- EC2 instance metadata (IMDSv2) -------------------------------------------------------

def imds(url, path, token=None, timeout=1.0):
    """GET metadata_url/latest/PATH with the IMDSv2 token; None for 404 (e.g. no spot notice)."""
    request = urllib.request.Request(f"{url.rstrip('/')}/latest/{path}", headers={"X-aws-ec2-metadata-token": token or ""})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.read().decode()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def imds_token(url, timeout=1.0):
    request = urllib.request.Request(f"{url.rstrip('/')}/latest/api/token", method="PUT",
                                     headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return answer.read().decode()


def instance_info(url):
    """{ec2: True, instance_type, instance_id, spot} where IMDSv2 answers, else {ec2: False, why}."""
    try:
        token = imds_token(url)
        life = imds(url, "meta-data/instance-life-cycle", token) or "on-demand"
        return {"ec2": True, "instance_type": imds(url, "meta-data/instance-type", token),
                "instance_id": imds(url, "meta-data/instance-id", token), "spot": life.strip() == "spot"}
    except (OSError, ValueError) as e:  # URLError and timeouts are OSErrors
        return {"ec2": False, "why": f"{type(e).__name__}: {e}"[:200]}


def spot_notice(url):
    """The spot interruption notice ({action, time}) or None."""
    token = imds_token(url)
    text = imds(url, "meta-data/spot/instance-action", token)
    return json.loads(text) if text else None


# --- autostop -----------------------------------------------------------------------------

def autostop_view(settings, state, runs_dir, running):
    """{armed, idle_seconds, command, fires_at, waiting_for_training} from the settings and the agent's state."""
    auto = settings.get("autostop")
    if not auto:
        return {"armed": False}
    paths = files(runs_dir)
    current = run_state.read_current(runs_dir)
    valid = current is not None and run_state.RUN_NAME.fullmatch(current)  # a name is a path: only a valid one
    ended = mtime(os.path.join(os.path.expanduser(runs_dir), current, run_state.EXIT)) if valid else 0.0
    last_activity = max(mtime(paths["heartbeat"]), ended, auto.get("armed_at", 0), state.get("started", 0),
                        state.get("training_seen", 0))
    view = {"armed": True, "idle_seconds": auto["idle_seconds"], "command": auto["command"], "last_activity": iso(last_activity),
            "waiting_for_training": bool(running)}
    view["fires_at_epoch"] = None if running else last_activity + auto["idle_seconds"]
    view["fires_at"] = iso(view["fires_at_epoch"])
    fired = run_state.read_json(paths["fired.json"]) or {}
    view["fired"] = fired if fired.get("after_activity") == view["last_activity"] else None  # once per idle period
    view["last_fired"] = fired or None
    return view


def fire(runs_dir, view):
    paths = files(runs_dir)
    record = {"fired_at": iso(time.time()), "after_activity": view["last_activity"], "command": view["command"]}
    run_state.write_atomic(paths["fired.json"], json.dumps(record))
    log(runs_dir, f"autostop: idle since {view['last_activity']}; running {view['command']!r}")
    try:
        out = subprocess.run(["sh", "-c", view["command"]], capture_output=True, text=True, timeout=120)
        record.update(exit_code=out.returncode, output=(out.stdout + out.stderr)[-2000:])
    except (OSError, subprocess.SubprocessError) as e:
        record.update(exit_code=None, output=str(e))
    run_state.write_atomic(paths["fired.json"], json.dumps(record))
    log(runs_dir, f"autostop: command exited {record['exit_code']}")


# --- the agent loop -----------------------------------------------------------------------

def read_settings(runs_dir):
    return {**DEFAULTS, **(run_state.read_json(files(runs_dir)["settings.json"]) or {})}


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
    """One round: instance, spot notice, autostop. Updates and returns `state`."""
    now = time.time()
    url = settings["metadata_url"]
    recheck = INSTANCE_RECHECK_SECONDS if not (state.get("instance") or {}).get("ec2") else 3600
    if url and (state.get("instance_url") != url or now - state.get("instance_checked", 0) > recheck):
        state.update(instance=instance_info(url), instance_checked=now, instance_url=url)
    running = run_state.running_run(runs_dir, settings["session"])
    stalled = run_state.stalled_since(running[1], settings.get("stall_seconds")) if running else None
    if running and not stalled:
        state["training_seen"] = now
    if stalled and state.get("stalled") != [running[0], iso(stalled)]:
        state["stalled"] = [running[0], iso(stalled)]
        log(runs_dir, f"run {running[0]} stalled at {iso(stalled)} (its processes live, its status.json is not rewritten): "
                      "autostop counts it as idle")
    if running and url and (state.get("instance") or {}).get("ec2"):
        try:
            notice = spot_notice(url)
        except (OSError, ValueError) as e:
            notice, state["spot_error"] = None, f"{type(e).__name__}: {e}"[:200]
        if notice:
            preempt(runs_dir, settings, running, notice)
            state["preempted"] = {"run": running[0], "notice": notice, "at": iso(now)}
    view = autostop_view(settings, state, runs_dir, None if stalled else running)
    if view["armed"] and (stalled or not running) and now >= view["fires_at_epoch"] and not view["fired"]:
        fire(runs_dir, view)
    state.update(polled_at=iso(now), autostop=view, running=running[0] if running else None)
    return state


def preempt(runs_dir, settings, running, notice):
    """Record the notice in the run dir (run_state puts it into the exit record), then stop the training."""
    name, run_dir = running
    log(runs_dir, f"spot interruption notice {json.dumps(notice)}: stopping run {name}")
    run_state.write_atomic(os.path.join(run_dir, run_state.PREEMPT), json.dumps({"notice": notice, "received_at": iso(time.time())}))
    code, lines = run_state.stop(run_dir, settings["session"], int(settings["spot_grace_seconds"]),
                                 reason=f"preempted: spot interruption notice ({notice.get('action')} at {notice.get('time')})")
    log(runs_dir, f"stop exited {code}: {' | '.join(lines)}")


def run(runs_dir):
    held = lock(runs_dir)
    if held is None:
        return 0  # another agent watches this runs dir
    source = mtime(HERE)
    state = {"pid": os.getpid(), "started": time.time(), "started_at": iso(time.time())}
    old = run_state.read_json(files(runs_dir)["state.json"]) or {}
    if old.get("pid") == os.getpid():  # re-executed after a code sync: keep what it had seen
        state.update({k: old[k] for k in ("started", "started_at", "training_seen") if k in old})
    run_state.write_atomic(files(runs_dir)["state.json"], json.dumps(state))
    log(runs_dir, f"agent started (pid {os.getpid()})")
    while True:
        settings = read_settings(runs_dir)
        try:
            poll_once(runs_dir, settings, state)
        except Exception as e:  # noqa: BLE001 - the watcher must outlive one bad round
            log(runs_dir, f"poll failed: {type(e).__name__}: {e}")
        run_state.write_atomic(files(runs_dir)["state.json"], json.dumps(state))
        time.sleep(max(0.2, float(settings["poll_seconds"])))
        if mtime(HERE) != source:  # `fab sync-code` brought a new version: continue as it
            log(runs_dir, "code changed: restarting")
            held.close()
            os.execv(sys.executable, [sys.executable, HERE, "run", runs_dir])


def agent_running(runs_dir):
    """The agent of this runs dir is alive (its pid from state.json runs host_agent.py). Never takes
    the lock: a check that held it for an instant could make a starting agent give up."""
    pid = (run_state.read_json(files(runs_dir)["state.json"]) or {}).get("pid")
    try:
        with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
            return os.path.basename(HERE).encode() in f.read()
    except (OSError, TypeError, ValueError):
        return False


def start(runs_dir):
    """Start the agent, detached from this SSH session; True if one was started (False: one runs already)."""
    if agent_running(runs_dir):
        return False
    with open(files(runs_dir)["agent.log"], "a") as out:
        subprocess.Popen([sys.executable, HERE, "run", runs_dir], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                         start_new_session=True, close_fds=True, cwd="/")
    return True


def boot_entry(runs_dir, armed):
    """Keep (or drop) the @reboot line in the user's crontab; returns a sentence about it."""
    if not shutil.which("crontab"):
        return "not re-armed after a reboot: the host has no crontab (install cron); arm it again after a reboot"
    cron = lambda text: text.replace("%", "\\%")  # noqa: E731 - cron turns a bare % into a newline
    mark = cron(f"{BOOT_MARK} {shlex.quote(runs_dir)}")
    line = cron(f"@reboot {shlex.join([sys.executable, HERE, 'boot', runs_dir])} ") + mark
    old = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
    lines = [x for x in (old.stdout.splitlines() if old.returncode == 0 else []) if not x.endswith(mark)]
    if armed:
        lines.append(line)
    out = subprocess.run(["crontab", "-"], input="".join(x + "\n" for x in lines), capture_output=True, text=True)
    if out.returncode != 0:
        return f"not re-armed after a reboot: crontab failed: {(out.stderr or out.stdout).strip()[:200]}"
    return "re-armed at every boot (@reboot in the user's crontab)" if armed else "boot entry removed"


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
    if changes.get("autostop"):
        auto = {"command": POWEROFF, **changes["autostop"], "armed_at": time.time()}
        if auto["command"] == POWEROFF and not can_sudo():
            user = pwd.getpwuid(os.geteuid()).pw_name
            return {"ok": False, "message": f"autostop cannot power the host off: `sudo -n` asks for a password for {user}. "
                                            "Allow passwordless sudo for /sbin/poweroff, or set autostop.command in the inventory."}
        changes = {**changes, "autostop": auto}
    settings.update(changes)
    run_state.write_atomic(files(runs_dir)["settings.json"], json.dumps(settings))
    outcome = {"ok": True, "settings": settings}
    if "autostop" in changes:
        outcome["boot"] = boot_entry(runs_dir, bool(settings["autostop"]))
    outcome["started"] = start(runs_dir)
    return outcome


def view(runs_dir):
    """What the monitor shows: is the agent alive, autostop, instance, price (see run_state.collect)."""
    paths = files(runs_dir)
    if not os.path.isdir(agent_dir(runs_dir)):
        return None
    settings, state = read_settings(runs_dir), run_state.read_json(paths["state.json"]) or {}
    alive = agent_running(runs_dir)
    running = run_state.running_run(runs_dir, settings["session"])
    if running and run_state.stalled_since(running[1], settings.get("stall_seconds")):
        running = None  # stalled: autostop counts it as idle
    return {"alive": alive, "autostop": autostop_view(settings, state, runs_dir, running), "instance": state.get("instance"),
            "price_per_hour": settings.get("price_per_hour")}


def main(argv):
    command, runs_dir = argv[0], os.path.expanduser(argv[1])
    if command == "run":
        return run(runs_dir)
    if command == "boot":
        if read_settings(runs_dir).get("autostop"):
            start(runs_dir)
        return 0
    if command == "configure":
        outcome = configure(runs_dir, json.loads(argv[2]))
        print(json.dumps(outcome))
        return 0 if outcome["ok"] else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
