"""The monitor screen of a run, from the state that remote_scripts/run_state.py reports (JSON).

    render(info, "gpu", console)     # `fab monitor` on the laptop
    python3 run_state.py ... --json | python -m trainer.results.run_view    # monitor_training.sh on the host

One renderer for both places. rich only: the deploy side needs neither NumPy nor TensorFlow.
Every remote string is rendered as plain text, never as markup, with its control characters
made visible (trainer/results/visible.py): a log line cannot clear or retitle the terminal.
"""

import json
import sys

from rich.console import Console, Group
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from trainer.results.report import headline as quoted_split
from trainer.results.report import scores
from trainer.results.run_lines import autostop_line, budget_line, clock, cost_line, duration, recoveries_line, storage_line
from trainer.results.visible import visible, visible_tree
from trainer.run_format import run_format

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
    parts = [host_table(info, label)]
    if info.get("run"):
        parts += [Text(""), run_table(info)]
        if info.get("log_tail"):
            parts += [Text(""), Text(f"last lines of {info.get('log')}", style="dim"), Text("\n".join(info["log_tail"]))]
    console.print(Panel(Group(*parts), title=Text(f"facenet-deploy monitor: {state}"), title_align="left", border_style=STYLES.get(state, "")))
    advice = what_to_do(info)
    if advice:  # outside the panel, so the commands copy cleanly
        console.print(Text(advice, style=STYLES.get(state, "")))


def host_table(info, label):
    """The screen's host part: the host, its GPUs and disk, the instance, cost, autostop, the budget cap."""
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
    return host


def state_headline(info):
    """The run's state in capitals, with what its exit record (or its stall, or its absence) says."""
    state = info["state"]
    exit_record = info.get("exit") or {}
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
        headline.append(f"  no progress for {duration(stall.get('seconds_since_update'))} (status.json last rewritten at "
                        f"{clock(stall.get('last_update'))}; stalled after {duration(stall.get('threshold_seconds'))}); "
                        f"its processes ({pids}) live but do not progress")
    return headline


def run_table(info):
    """The screen's run part: state, recoveries, progress, devices, metrics, folds, storage, the trainer's error."""
    state, status = info["state"], info.get("status") or {}
    run = Table.grid(padding=(0, 2))
    run.add_row("run", T(f"{info['run']}  ({info.get('run_dir')})"))
    run.add_row("state", state_headline(info))
    if info.get("recoveries"):  # `fab watch` moved the run (deploy/recovery)
        run.add_row("recovered", T(recoveries_line(info["recoveries"])))
    if info.get("training") and info.get("processes"):  # run_state's answer to "is it training?"
        pids = ", ".join(str(p["pid"]) for p in info["processes"])
        if state not in run_format.LIVE:
            run.add_row("processes", T(f"the run is {state}, but its processes ({pids}) still live"))
        elif not info.get("session_alive"):
            run.add_row("session", T(f"tmux session {info['session']} is closed; the training's processes ({pids}) live on"))
    if status.get("epochs"):
        bar = Table.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=status["epochs"], completed=status.get("epoch", 0), width=30),
                    T((f"fold {status['fold']}/{status['folds']}, " if status.get("folds") else "")
                      + f"epoch {status.get('epoch', 0)}/{status['epochs']}   {status.get('seconds_per_epoch') or '?'} s/epoch"
                      + (f"   ETA {duration(status.get('eta_seconds'))}" if state == "running" else "")))
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
    return run

if __name__ == "__main__":
    state = json.load(sys.stdin)
    render(state, "this host", Console(soft_wrap=True, highlight=False))
    sys.exit(state.get("exit_code", 0))
