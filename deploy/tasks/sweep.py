"""`fab sweep`: several configurations trained over several hosts, compared honestly (the work is in deploy/sweep/)."""

from fabric import task
from invoke.exceptions import Exit

from deploy.errors import LocalInputError
from deploy.inventory import load_inventory
from deploy.tasks.plumbing import as_exit, console, interrupts_end_the_step, say


@task(iterable=["set"],
      help={"name": "the sweep's name: its runs are NAME-<values>",
            "set": "KEY=V1,V2: a config key and its values (repeat --set for more keys: every combination is a run)",
            "hosts": "inventory hosts to train on, comma-separated (a,b)",
            "launch": "launch N hosts for the sweep (`fab launch`'s settings); each is downed once nothing is left for it",
            "folds": "K-fold cross-validation by actor for every configuration (chosen by the mean over folds)",
            "status": "show the sweep's table and exit (nothing is changed)",
            "detach": "start the hosts' queues and return (the hosts go on with the laptop closed)"})
def sweep(c, name, set=None, hosts=None, launch=None, folds=None, status=False, detach=False):  # noqa: A002 - the flag is --set
    """Train every combination of --set values as runs NAME-<values> over several hosts, one training per host at a time.

    Every run uses the same split (seed and split.* are the training config's), so all are tested on
    the same actors. The estimate (configurations x the smoke test's measured time, and its price) is
    printed first. Each host gets a queue and a runner in tmux that trains its runs one after another,
    so the sweep goes on with the laptop closed. This command then follows it: with run storage, a host
    that does not answer for recovery.unreachable_minutes has its runs moved to the others (from run
    storage's last epoch), as `fab watch` moves a run; each run's claim in storage names the one host
    that may start it, so a host that lives on unseen never trains a run moved off it. Without run
    storage its runs are not moved (it may still train them): the others go on, then exit 6 says to run
    this again once it answers. Run it again to continue: finished runs are skipped, stopped
    or lost ones resumed, none trained twice. The table is sorted by validation UAR (the CV mean with
    --folds), the metric that chooses; the chosen run's test interval is shown once, never used to
    choose. One command per sweep at a time (a lock on its folder on the laptop).
    Exit code: 0 every run finished, 1 a run failed (or a host's runner
    failed to start a run 3 times, naming the host and why), 2 bad input (or another `fab sweep NAME` runs), 3 stopped on request (`fab stop`:
    run it again to continue), 6 a host unreachable (at the start, or without run storage while its runs wait on it), 130 Ctrl-C (the hosts go on).
    """
    from deploy.sweep import start

    try:
        with interrupts_end_the_step():
            inv = load_inventory()
            if status:
                code = start.status(c.config, inv, name, console)
            else:
                code = start.sweep(c.config, inv, name, parse_sets(set), hosts=split_hosts(hosts), launch=count(launch, "--launch"),
                                   folds=count(folds, "--folds", least=2), detach=detach, say=say, console=console)
    except Exit:
        raise
    except BaseException as e:
        raise as_exit(e) from None
    if code:
        raise Exit(code=code)


def parse_sets(items):
    from deploy.sweep.plan import parse_sets as parse

    return parse(items)


def split_hosts(hosts):
    return [h.strip() for h in hosts.split(",") if h.strip()] if hosts else []


def count(value, option, least=1):
    if value is None:
        return None
    if not str(value).isdigit() or int(value) < least:
        raise LocalInputError(f"{option} expects a whole number, {least} or more. Received: {value!r}")
    return int(value)
