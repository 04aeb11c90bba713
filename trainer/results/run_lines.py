"""The monitor screen's one-line parts (trainer/results/run_view.py draws the screen): the host's cost and
autostop, the budget cap, the run's recoveries and its copy in storage. rich only.

    cost_line(info, price, eta_seconds)    # "up 1h02m   $0.52 so far at $0.5/h   about $1.10 more to finish"
    autostop_line(agent), budget_line(budget), recoveries_line(recoveries), storage_line(record, host_epoch)
"""

from datetime import datetime

from rich.text import Text


def duration(seconds):
    if seconds is None:
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def clock(iso):
    """An ISO time from the host as HH:MM in this machine's time zone."""
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%H:%M")
    except (TypeError, ValueError):
        return "?"


def autostop_line(agent):
    if not agent or not agent["autostop"]["armed"]:
        return Text("off")
    auto = agent["autostop"]
    seconds = auto["idle_seconds"]
    idle = f"after {seconds / 60:.4g} idle minutes" if seconds >= 60 else f"after {seconds:.3g} idle seconds"
    if not agent.get("alive"):
        return Text(f"armed ({idle}) but the host agent is not running: `fab autostop --idle-minutes N` starts it", style="yellow")
    verb = "powers off" if "poweroff" in auto["command"] else "runs its command"
    if auto.get("fired"):
        fired = auto["fired"]
        return Text(f"fired at {clock(fired['fired_at'])}: `{fired['command']}` exited {fired.get('exit_code')}", style="bold")
    if auto["waiting_for_training"]:
        return Text(f"{verb} {idle}; waits while the training runs")
    if auto.get("held"):  # a poweroff would delete the host with a run not yet fetched nor stored (agent_events.py)
        return Text(f"{verb} {idle}; HELD BACK: {auto['held']}", style="bold yellow")
    last, waiting = auto.get("last_fired"), auto.get("waiting_for") or []
    return Text(f"{verb} at {clock(auto['fires_at'])} if still idle" + (f" ({auto['why']})" if auto.get("short") else "")
                + (f" (last fired at {clock(last['fired_at'])}, exit {last.get('exit_code')})" if last else "")
                + (f"; waiting: {'; '.join(map(str, waiting))}" if waiting else ""))


def budget_line(budget):
    """The budget cap (launch.max_hours): when it powers the host off, whatever it is doing."""
    if budget.get("fired_at"):
        return Text(f"reached at {clock(budget['fired_at'])}: `{budget.get('command')}` exited {budget.get('exit_code')}", style="bold")
    try:
        when = datetime.fromisoformat(budget["deadline"]).astimezone()
        at = f"{when:%H:%M}" if when.date() == datetime.now().astimezone().date() else f"{when:%a %H:%M}"
    except (KeyError, TypeError, ValueError):
        at = "?"
    return Text(f"powers off at {at} ({budget.get('max_hours')} h after launch), whatever it is doing")


def recoveries_line(recoveries):
    """'2 times; last: on gpu2 at 14:05 from epoch 3 (gpu1 unreachable for 5.0 min)'."""
    last = recoveries[-1]
    return (f"{len(recoveries)} time{'s' if len(recoveries) > 1 else ''}; last: on {last.get('host')} at {clock(last.get('at'))} "
            f"from epoch {last.get('from_epoch')} (was on {last.get('from_host')}: {last.get('reason')})")


def cost_line(info, price, eta_seconds):
    """Uptime, cost so far and to the end of the run (ETA x price). Without a price the row says so
    first, the uptime after it: an uptime in the cost row must not read as the cost."""
    up = info.get("uptime_seconds")
    if not price:
        return Text("no price set (price_per_hour in the inventory)" + (f"; host up {duration(up)}" if up is not None else ""))
    text = f"up {duration(up)}"
    text += f"   ${up / 3600 * price:.2f} so far at ${price:g}/h" if up is not None else f"   ${price:g}/h"
    if eta_seconds:
        text += f"   about ${eta_seconds / 3600 * price:.2f} more to finish"
    return Text(text)


def _ago(seconds):
    if not isinstance(seconds, (int, float)):
        return "?"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else duration(seconds)


def storage_line(record, host_epoch=None):
    """'stored: epoch 14, 40 s ago' / 'storage: 3 uploads failing: AccessDenied ...' (remote_scripts/storage_state.py);
    with the host's epoch, how many epochs storage lags behind it."""
    stored, failures = record.get("stored") or {}, record.get("failures") or {}
    text = Text()
    if stored:
        text.append(f"stored: epoch {stored.get('epoch')}, {_ago(record.get('seconds_since_stored'))} ago"
                    + (f" ({stored.get('state')}, final)" if stored.get("final") else "") + f"  {record.get('url')}")
    lag = storage_lag(record, host_epoch)
    if lag:
        text.append(f"; storage is {lag} epoch{'s' if lag != 1 else ''} behind the host", style="bold yellow" if lag > 1 else "yellow")
    if failures:
        text.append(("; " if stored else "") + f"storage: {failures.get('count')} upload{'s' if failures.get('count') != 1 else ''} "
                    f"failing: {failures.get('code')}: {failures.get('message')}", style="bold red")
    if record.get("state") == "gave-up":
        text.append("; gave up: the run's last state is not stored (the host keeps it)", style="bold red")
    elif record.get("state") == "superseded":
        text.append(f"; stopped: {record.get('superseded')}", style="yellow")
    elif not stored and not failures:
        text.append(f"storage: nothing stored yet  {record.get('url')}", style="dim")
    if not record.get("done") and not record.get("alive"):
        text.append("; its uploader is not running: the host agent starts it again at its next round", style="bold yellow")
    if record.get("restarts"):
        text.append(f"; uploader restarted {record['restarts']} time(s) by the host agent (its storage.log says why it ended)",
                    style="yellow")
    return text


def storage_lag(record, host_epoch):
    """Epochs the host finished that storage does not hold yet (None when either is unknown)."""
    stored = (record or {}).get("stored") or {}
    if not isinstance(host_epoch, int) or (stored and not isinstance(stored.get("epoch"), int)):
        return None
    return max(0, host_epoch - (stored.get("epoch") if stored else 0))
