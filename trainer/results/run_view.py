"""The monitor screen of a run, from the state that remote_scripts/run_state.py reports (JSON).

    render(info, "gpu", console)     # `fab monitor` on the laptop
    python3 run_state.py ... --json | python -m trainer.results.run_view    # monitor_training.sh on the host

One renderer for both places. rich only: the deploy side needs neither NumPy nor TensorFlow.
Every remote string is rendered as plain text, never as markup, with its control characters
made visible (trainer/results/visible.py): a log line cannot clear or retitle the terminal.
"""

import json
import sys
from datetime import datetime

from rich.console import Console, Group
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from trainer.results.report import headline as quoted_split
from trainer.results.report import scores
from trainer.results.visible import visible, visible_tree

STYLES = {"running": "bold green", "starting": "bold cyan", "finished": "bold blue", "failed": "bold red",
          "stopped": "bold yellow", "vanished": "bold red", "preempted": "bold magenta", "stalled": "bold red", "none": "dim",
          "superseded": "bold yellow"}
WHAT_TO_DO = {
    "failed": "The trainer exited with an error (above). Fix it, then resume with `fab train --resume` "
              "or start over with `fab train`. Full log: `fab logs --lines 200`.",
    "vanished": "No process of the run lives and it left no exit record: the host rebooted or its processes were killed. "
                "Resume from its last finished epoch with `fab train --resume`.",
    "stalled": "The training's processes live but it makes no progress (a hang: a deadlock, a stopped process, a stuck GPU "
               "or disk); the host bills all the same. See `fab logs`, then end it with `fab stop` (the backup of its last "
               "finished epoch stays) and continue with `fab train --resume`.",
    "stopped": "Stopped on request; its backup is intact. Continue with `fab train --resume`.",
    "preempted": "The spot instance is being reclaimed; the backup of the last finished epoch is on the host. Quickly: "
                 "`fab fetch-results --backup`, then on another host `fab -H <host> deploy-full --resume-from results/<host>/<run>` "
                 "(or, if the instance only stops, start it again and `fab train --resume`).",
    "finished": "Done. Bring the results home with `fab fetch-results`.",
    "superseded": "This launch was fenced: the run moved to another launch (`fab watch` moved it, or storage holds a later "
                  "launch's epochs), so it stopped without a result. The run's result is the other launch's: `fab runs` "
                  "says where it is. Nothing to do here.",
    "none": "No training has been started on this host: `fab deploy-full` (or `fab train`).",
}


def _duration(seconds):
    if seconds is None:
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def what_to_do(info):
    """The advice under the monitor screen, from the state and the exit record's reason."""
    reason = (info.get("exit") or {}).get("reason") or ""
    if info["state"] == "failed" and "disk" in reason and "full" in reason:
        return (f"The host's disk is full ({info['disk']['path']}). Free space there first (old runs, `fab fetch-results` "
                "then delete them), then continue with `fab train --resume`: resuming on a full disk fails the same way.")
    if info["state"] == "failed" and "SIGKILL" in reason:
        return (f"The trainer was {reason}. If it ran out of memory, lower train.batch_size or data.max_frames "
                "(or data.cache_in_memory: false), then `fab train --resume`. Full log: `fab logs --lines 200`.")
    return WHAT_TO_DO.get(info["state"])


def _clock(iso):
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
        return Text(f"fired at {_clock(fired['fired_at'])}: `{fired['command']}` exited {fired.get('exit_code')}", style="bold")
    if auto["waiting_for_training"]:
        return Text(f"{verb} {idle}; waits while the training runs")
    if auto.get("held"):  # a poweroff would delete the host with a run not yet fetched nor stored (agent_events.py)
        return Text(f"{verb} {idle}; HELD BACK: {auto['held']}", style="bold yellow")
    last, waiting = auto.get("last_fired"), auto.get("waiting_for") or []
    return Text(f"{verb} at {_clock(auto['fires_at'])} if still idle" + (f" ({auto['why']})" if auto.get("short") else "")
                + (f" (last fired at {_clock(last['fired_at'])}, exit {last.get('exit_code')})" if last else "")
                + (f"; waiting: {'; '.join(map(str, waiting))}" if waiting else ""))


def budget_line(budget):
    """The budget cap (launch.max_hours): when it powers the host off, whatever it is doing."""
    if budget.get("fired_at"):
        return Text(f"reached at {_clock(budget['fired_at'])}: `{budget.get('command')}` exited {budget.get('exit_code')}", style="bold")
    try:
        when = datetime.fromisoformat(budget["deadline"]).astimezone()
        at = f"{when:%H:%M}" if when.date() == datetime.now().astimezone().date() else f"{when:%a %H:%M}"
    except (KeyError, TypeError, ValueError):
        at = "?"
    return Text(f"powers off at {at} ({budget.get('max_hours')} h after launch), whatever it is doing")


def recoveries_line(recoveries):
    """'2 times; last: on gpu2 at 14:05 from epoch 3 (gpu1 unreachable for 5.0 min)'."""
    last = recoveries[-1]
    return (f"{len(recoveries)} time{'s' if len(recoveries) > 1 else ''}; last: on {last.get('host')} at {_clock(last.get('at'))} "
            f"from epoch {last.get('from_epoch')} (was on {last.get('from_host')}: {last.get('reason')})")


def cost_line(info, price, eta_seconds):
    """Uptime, cost so far and to the end of the run (ETA x price). Without a price the row says so
    first, the uptime after it: an uptime in the cost row must not read as the cost."""
    up = info.get("uptime_seconds")
    if not price:
        return Text("no price set (price_per_hour in the inventory)" + (f"; host up {_duration(up)}" if up is not None else ""))
    text = f"up {_duration(up)}"
    text += f"   ${up / 3600 * price:.2f} so far at ${price:g}/h" if up is not None else f"   ${price:g}/h"
    if eta_seconds:
        text += f"   about ${eta_seconds / 3600 * price:.2f} more to finish"
    return Text(text)


def _ago(seconds):
    if not isinstance(seconds, (int, float)):
        return "?"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else _duration(seconds)


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


def T(value):
    """Remote text as plain text: a run name or a log line is never rich markup, nor a terminal escape."""
    return Text(visible(value))


MALFORMED = (KeyError, TypeError, AttributeError, ValueError, IndexError)  # what a hand-edited or damaged run file raises here


def render(info, label, console):
    """The monitor screen; when the run's files on the host do not read as this version writes them
    (edited, damaged), the state line and a warning naming them instead of a traceback."""
    try:
        screen(info, label, console)
    except MALFORMED as e:
        shown = visible_tree({k: info.get(k) for k in ("state", "run", "run_dir")})
        console.print(T(f"run {shown['run']} ({shown['run_dir']}): {str(shown['state']).upper()}"))
        console.print(T(f"warning: the run's files on the host (status.json, metrics.json, launch.json, exit records) do not read as "
                        f"this version writes them ({type(e).__name__}: {visible(str(e), '')}); showing the state only. "
                        "Look at them with `fab logs` or on the host."))


def screen(info, label, console):
    """The monitor screen: host, GPU, disk, run state, epoch bar, metrics, log tail, what to do."""
    info = visible_tree(info)  # every string in it came from the host
    state = info["state"]
    host = Table.grid(padding=(0, 2))
    host.add_row("host", T(f"{label} ({info['host']})"))
    if info["gpus"] is None:
        host.add_row("GPU", "none (no nvidia-smi)")
    for g in info["gpus"] or []:
        host.add_row("GPU", T(g.get("error") or f"{g['name']}  util {g['utilization']}%  memory {g['memory_used_mib']}/{g['memory_total_mib']} MiB"))
    disk = info["disk"]
    free = T(f"{disk['free_bytes'] / 2**30:.1f} GiB of {disk['total_bytes'] / 2**30:.1f} GiB")
    if disk.get("low"):
        free.append(f"  LOW: a full disk fails the run; free space in {disk['path']}", style="bold red")
    host.add_row("disk free", free)
    agent = info.get("agent")
    instance = (agent or {}).get("instance") or {}
    if instance.get("ec2"):
        host.add_row("instance", T(f"{instance.get('instance_type')} ({'spot' if instance.get('spot') else 'on-demand'}, EC2)"))
    price = info.get("price_per_hour") or (agent or {}).get("price_per_hour")
    eta = (info.get("status") or {}).get("eta_seconds") if state in ("starting", "running") else None
    host.add_row("cost", cost_line(info, price, eta))
    host.add_row("autostop", autostop_line(agent))
    if agent and agent.get("budget"):
        host.add_row("budget cap", budget_line(agent["budget"]))
    if info.get("error"):
        host.add_row("error", Text(str(info["error"]), style="red"))
    parts = [host]
    if info.get("run"):
        status = info.get("status") or {}
        exit_record = info.get("exit") or {}
        run = Table.grid(padding=(0, 2))
        headline = Text(state.upper(), style=STYLES.get(state, ""))
        if exit_record:
            headline.append(f"  exit code {exit_record.get('exit_code')} at {exit_record.get('ended_at')}")
            if exit_record.get("reason"):
                headline.append(f": {exit_record['reason']}")
        elif state == "vanished":
            headline.append("  no process of the run lives, no exit record")
        elif state == "stalled":
            stall = info.get("stall") or {}
            pids = ", ".join(str(p["pid"]) for p in info.get("processes") or [])
            headline.append(f"  no progress for {_duration(stall.get('seconds_since_update'))} (status.json last rewritten at "
                            f"{_clock(stall.get('last_update'))}; stalled after {_duration(stall.get('threshold_seconds'))}); "
                            f"its processes ({pids}) live but do not progress")
        run.add_row("run", T(f"{info['run']}  ({info.get('run_dir')})"))
        run.add_row("state", headline)
        if info.get("recoveries"):  # `fab watch` moved the run (deploy/recovery)
            run.add_row("recovered", T(recoveries_line(info["recoveries"])))
        if info.get("processes") and not info.get("session_alive") and state in ("starting", "running", "stalled"):
            pids = ", ".join(str(p["pid"]) for p in info["processes"])
            run.add_row("session", T(f"tmux session {info['session']} is closed; the training's processes ({pids}) live on"))
        if status.get("epochs"):
            bar = Table.grid(padding=(0, 1))
            bar.add_row(ProgressBar(total=status["epochs"], completed=status.get("epoch", 0), width=30),
                        T((f"fold {status['fold']}/{status['folds']}, " if status.get("folds") else "")
                          + f"epoch {status.get('epoch', 0)}/{status['epochs']}   {status.get('seconds_per_epoch') or '?'} s/epoch"
                          + (f"   ETA {_duration(status.get('eta_seconds'))}" if state == "running" else "")))
            run.add_row("progress", bar)
        dist = status.get("distribution")
        if dist:
            run.add_row("devices", T(f"{dist['replicas']} replica(s) ({dist['strategy']}), global batch {dist['global_batch_size']}"))
        last = {k: v for k, v in (status.get("last") or {}).items() if isinstance(v, (int, float))}
        if last:
            keys = [k for k in ("val_uar", "val_accuracy", "val_loss", "uar", "loss", "learning_rate") if k in last]
            run.add_row("last epoch", T("   ".join(f"{k} {last[k]:.4g}" for k in keys)))
        if status.get("best"):
            best = status["best"]
            run.add_row("best", T(f"{best['metric']} {best['value']:.4f} at epoch {best['epoch']}"))
        if info.get("metrics"):
            name, m = quoted_split(info["metrics"])
            run.add_row("final", T(f"{name}: {scores(m)}"))
        if info.get("cv"):
            cv = info["cv"]
            line = f"{cv['folds_done']}/{cv['folds']} folds done"
            if cv.get("mean"):
                line += f"   test UAR {cv['mean']['uar']:.3f} ± {cv['std']['uar']:.3f} over folds"
            run.add_row("folds", T(line))
        if info.get("storage"):
            run.add_row("storage", storage_line(info["storage"], (info.get("status") or {}).get("epoch")))
        if status.get("error"):
            run.add_row("error", Text(f"{status['error'].get('type')}: {status['error'].get('message')}", style="red"))
        parts += [Text(""), run]
        if info.get("log_tail"):
            parts += [Text(""), Text(f"last lines of {info.get('log')}", style="dim"), Text("\n".join(info["log_tail"]))]
    console.print(Panel(Group(*parts), title=Text(f"facenet-deploy monitor: {state}"), title_align="left", border_style=STYLES.get(state, "")))
    advice = what_to_do(info)
    if advice:  # outside the panel, so the commands copy cleanly
        console.print(Text(advice, style=STYLES.get(state, "")))


if __name__ == "__main__":
    state = json.load(sys.stdin)
    render(state, "this host", Console(soft_wrap=True, highlight=False))
    sys.exit(state.get("exit_code", 0))
