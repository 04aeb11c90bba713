"""The host agent's budget cap (launch.max_hours): a warning before the deadline, then the training stopped (its
backup kept) and the command run (power off), whatever the host is doing. Called by host_agent.py every round;
standard library only.

    state["budget"] = check_budget(runs_dir, settings, running, now)   # the cap's view for state.json, or None
"""

import subprocess

from agent_events import notify_host
from host_files import files, iso, log, read_json, read_settings, save
from run_stop import stop


def notify(runs_dir, event, message, key):
    """Tell the user `message`: the agent's log, and the webhook (notify.webhook) once per `key`."""
    log(runs_dir, f"notify {event}: {message}")
    notify_host(runs_dir, read_settings(runs_dir), key, event, message)


def check_budget(runs_dir, settings, running, now):
    """The budget cap: warn `warn_seconds` before the deadline, then at the deadline stop the training
    (its backup is kept) and run the command (power off), whatever the host is doing. Each fires once
    per deadline (budget.json keeps what happened): a host started again by hand is not capped again.
    Returns the cap's view for the state file, or None when there is no cap."""
    budget = settings.get("budget")
    if not budget:
        return None
    path = files(runs_dir)["budget.json"]
    record = read_json(path) or {}
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
            code, lines = stop(running[1], settings["session"], int(settings["spot_grace_seconds"]),
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
