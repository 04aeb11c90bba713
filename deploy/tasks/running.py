"""The training on the host: train, stop; and the host around it: autostop (power off when idle), unlock.

On a cluster (-H CLUSTER), train and stop act on every worker; autostop and unlock on one host.
"""

import time

from deploy.errors import DeployError, LocalInputError
from deploy.host import agent, cluster, lock, training
from deploy.tasks.plumbing import host_task, prefixed, say


def check_train_options(inv, run_name=None, folds=None, resume=False, **_):
    """train's (and deploy-full's) options checked before anything reaches the host: the run name, --folds."""
    if run_name is not None:
        training.valid_run_name(run_name)
    if folds is not None:
        if resume:
            raise LocalInputError("--resume continues a run as it was planned (a CV run at its first unfinished fold): drop --folds.")
        if not str(folds).isdigit() or int(folds) < 2:
            raise LocalInputError(f"--folds expects a number of folds, 2 or more. Received: {folds!r}")


def train_cluster(hosts, group, resume=False, restart=False, run_name=None, folds=None):
    """train on a cluster: a new run (or --resume: the chief's current run, from its backup) on every worker."""
    if folds:
        raise LocalInputError("--folds: cross-validation runs on one host; a cluster trains one run at a time.")
    workers = cluster.tf_config_workers(hosts[0].inv, group)
    if resume:
        info = training.run_state(hosts[0].conn, hosts[0].inv, log_lines=0)
        if not info.get("run") or info["state"] in ("none", "finished"):
            raise DeployError(f"Nothing to resume on the chief {hosts[0].target.label}: its current run is {info.get('run')} ({info['state']}).")
        name = info["run"]
    else:
        name = training.valid_run_name(run_name or time.strftime("%Y%m%d-%H%M%S"))
    cluster.launch_workers(hosts, workers, name, prefixed, resume=resume)


@host_task(changes_host=True, before_connect=check_train_options, on_cluster=train_cluster,
           help={"resume": "continue the last run from its backup", "restart": "stop the running training and start a new one",
                 "run_name": "name of the new run (default: a timestamp); letters, digits, '.', '_', '-'",
                 "folds": "K-fold cross-validation by actor: RUN/fold-1 ... fold-K, summary in RUN/cv.json"})
def train(h, resume=False, restart=False, run_name=None, folds=None):
    """Launch full training in a detached tmux session (remote_scripts/launch_training.sh).

    Refuses while a training runs: --restart replaces it, --resume continues the last run (a
    cross-validation at its first unfinished fold). The trainer's output goes to RUN_DIR/train.log;
    its exit code and end time to RUN_DIR/exit.json.
    """
    start_training(h, resume=resume, run_name=run_name, folds=int(folds) if folds else None)


def start_training(h, run_name=None, resume=False, folds=None):
    return agent.start_training(h.conn, h.inv, h.target.label, say, resume=resume, run_name=run_name, folds=folds)


def stop_cluster(hosts, group, wait=120):
    cluster.each(hosts, lambda h: training.stop(h.conn, h.inv, prefixed(h), wait=wait))


@host_task(help={"wait": "seconds to let the current epoch finish before stopping the training's processes at once"}, on_cluster=stop_cluster)
def stop(h, wait=120):
    """Stop the training gracefully (it saves its backup and records `stopped`), then remove its tmux session.

    After --wait seconds its whole process group is stopped at once (SIGTERM, then SIGKILL); exit 1
    if any of its processes survives. A second stop is harmless. Continue with `fab train --resume`.
    """
    training.stop(h.conn, h.inv, say, wait=wait)


@host_task()
def unlock(h):
    """Remove the host's lock left by a task that died (the lock names its task, user and start time)."""
    holder = lock.unlock(h.conn, h.inv)
    say(f"Removed the lock of {lock.describe(holder)}." if holder is not None else "The host was not locked.")


@host_task(help={"idle_minutes": "arm: run autostop.command (default: power off) after this many idle minutes",
                 "cancel": "disarm"})
def autostop(h, idle_minutes=None, cancel=False):
    """Power the host off when it has been idle for N minutes: no training, no fab task, no SSH login, no GPU process.

    The host's agent (remote_scripts/host_agent.py) does it, so the laptop may be closed; it
    never fires while a training runs, and cron starts it at boot and every minute unless it runs.
    autostop.wait_for in the inventory says whether SSH logins and GPU processes count. The command is
    autostop.command (default `sudo -n /sbin/poweroff`: an EC2 instance then stops and its disk
    is kept, unless its shutdown behavior is "terminate": then the instance and its root disk,
    with every run on it, are deleted). Without options: say whether it is armed. Inventory
    `autostop.idle_minutes` arms it at every train and deploy-full.
    """
    if cancel and idle_minutes is not None:
        raise LocalInputError("Give --idle-minutes N (arm) or --cancel (disarm), not both.")
    if cancel:
        outcome = agent.configure(h.conn, h.inv, h.target.label, autostop=None)
    elif idle_minutes is not None:
        try:
            minutes = float(idle_minutes)
        except ValueError:
            minutes = 0
        if not minutes > 0:
            raise LocalInputError(f"--idle-minutes expects a number of minutes above 0. Received: {idle_minutes!r}")
        outcome = agent.configure(h.conn, h.inv, h.target.label, autostop=agent.autostop_settings(h.inv, minutes))
    else:
        outcome = agent.configure(h.conn, h.inv, h.target.label)
    say(agent.describe(outcome["settings"], outcome.get("boot")))
