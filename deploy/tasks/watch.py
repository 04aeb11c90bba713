"""`fab watch`: the thin task over deploy/recovery/watch.py."""

from fabric import task
from invoke.exceptions import Exit

from deploy.errors import DeployError, LocalInputError
from deploy.host import cluster, training
from deploy.host.connection import connect
from deploy.inventory import load_inventory
from deploy.tasks.plumbing import as_exit, interrupts_end_the_step, say


@task(help={"run": "the run to follow (default: the host's current run)"})
def watch(c, run=None):
    """Follow a run until it ends, and move it to another host when its host is lost (runs in the foreground: tmux).

    Every recovery.poll_seconds it asks the run's host (-H, else the last deploy-full's) for the
    run's state. Preempted, vanished, or the host unreachable for recovery.unreachable_minutes:
    it resumes the run from storage on the next free host of recovery.hosts (else launches one,
    recovery.launch), at most recovery.max_restarts times, records each recovery in the run and
    notifies notify.webhook. A run that fails on its own is not restarted.
    Exit code: 0 finished, 3 stopped on request, the run's own exit code when it failed, 10 lost and
    not recoverable (no stored epoch, no free host, max_restarts reached), 2 bad input, 130 Ctrl-C.
    """
    from deploy.recovery.watch import watch as follow

    target = None
    try:
        with interrupts_end_the_step():
            inv = load_inventory()
            group = cluster.named_cluster(c, inv)
            if group is not None:
                raise LocalInputError(f"`fab watch` follows a run on one host; {group.name} is a cluster. Watch its chief: "
                                      f"fab -H {group.hosts[0]} watch (a cluster is not moved: `fab -H {group.name} train --resume`).")
            target = connect(c, inv)
            hinv = inv.for_host(target.host_name)
            say(f"host: {target.describe()}", "dim")
            if run is None:
                info = training.run_state(target.conn, hinv, log_lines=0, quick=True)
                if not info.get("run"):
                    raise DeployError(f"No run on {target.label} to watch: start one with `fab deploy-full`, or name it with --run.")
                run = info["run"]
            else:
                training.valid_run_name(run, "--run")
            say(f"watching run {run} on {target.label}: every {inv.recovery['poll_seconds']:g} s; recovery to "
                f"{', '.join(inv.recovery['hosts']) or 'no listed host'}"
                + (f", else a launched {inv.recovery['launch']['type']}" if inv.recovery["launch"]["type"] else "")
                + f"; at most {inv.recovery['max_restarts']} recoveries" + ("; notifications on" if inv.notify["webhook"] else ""))
            code = follow(inv, c.config, target, run, say)
    except Exit:
        raise
    except BaseException as e:
        raise as_exit(e, target) from None
    if code:
        raise Exit(code=code)
