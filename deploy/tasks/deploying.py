"""Getting a host ready and the run started: provision, sync-code, sync-data, preflight, smoke-test, deploy-full.

deploy-full runs DEPLOY_STEPS in order (each also a task of its own), on one host or, with -H
CLUSTER, on every host of the cluster at once; the steps are host operations in deploy/host/.
"""

import os
import time

from rich.text import Text

from deploy.errors import DeployError, Interrupted, LocalInputError
from deploy.host import checks, cluster, sync, training
from deploy.host import provision as prov
from deploy.host.remembered import remember_cluster, remember_host
from deploy.host.run_config import local_config
from deploy.paths import REPO_ROOT
from deploy.runs import storage
from deploy.tasks.plumbing import console, host_task, prefixed, say
from deploy.tasks.running import check_train_options, start_training

RESTART = {"restart": "stop the running training first (else the task refuses to change what it uses)"}


@host_task(changes_host=True, survey=("provision",), leaves_training=True,
           help={**RESTART, "verbose": "show pip's output as it comes (else one progress line; the full output goes to a log file)"})
def provision(h, restart=False, verbose=False):
    """Install missing apt packages, report the GPU, create the venv, install pinned requirements.

    Idempotent: a second run only checks (one SSH command) unless the requirements or the GPU
    count changed. Uses non-interactive sudo when not root. Fails if nvidia-smi is broken (unless
    allow_cpu_training) or if TensorFlow sees fewer GPUs than nvidia-smi, and says why.
    """
    show_all(verbose)
    prov.provision(h.conn, h.inv, say)


def show_all(verbose):
    """--verbose: long steps show their output as it comes (deploy.host.progress reads FACENET_VERBOSE)."""
    if verbose:
        os.environ["FACENET_VERBOSE"] = "1"


@host_task(name="sync-code", changes_host=True, survey=("code",), leaves_training=True, help=RESTART)
def sync_code(h, restart=False):
    """Rsync trainer/, remote_scripts/, configs/ and the setup files to remote.project_dir.

    Only changes travel; stale files inside those code folders are deleted, nothing else there is touched.
    """
    sync.sync_code(h.target, h.inv, say)


def _local_data(inv, **_):
    sync.check_local_data(inv)


@host_task(name="sync-data", changes_host=True, before_connect=_local_data, survey=("data",), leaves_training=True, help=RESTART)
def sync_data(h, restart=False):
    """Rsync the inventory's local_data dirs to remote.data_dir/<name>/ with progress, then verify files and bytes.

    A missing or empty local directory stops before anything is uploaded. An interrupted
    upload resumes where it stopped when run again.
    """
    sync.sync_data(h.target, h.inv, say)


@host_task()
def preflight(h):
    """Validate the host's copy of the data (`python -m trainer validate`); stop with its summary if it would not train."""
    checks.preflight(h.conn, h.inv, say)


@host_task(name="smoke-test", changes_host=True, help=RESTART)
def smoke_test(h, restart=False):
    """Run `python -m trainer smoke` on the host (a few clips, 2 epochs, reload, predict); stop and say why if it fails.

    Then it times the training config's steps on the host and prints the estimated time and cost of
    the full training: the trainer's start, its first calls (tracing), epochs x (training and validation
    steps, checkpoints and logs) and its end, as the smoke run took them and scaled to the training config.
    """
    checks.smoke_test(h.conn, h.inv, say, h.inv.price_of(h.target.label))


def _deploy_checks(inv, run_name=None, resume_from=None, **_):
    """Before touching the host: data dirs exist and hold *.npz, configs exist in the repo, the run name is valid,
    a run to resume was fetched with its backup."""
    check_train_options(inv, run_name)
    if resume_from is not None:
        if run_name is not None:
            raise LocalInputError("--resume-from continues a run under its own name: drop --run-name.")
        sync.check_run_to_resume(storage.resume_source(inv, resume_from, say=say))  # s3://.../RUN: downloaded first
    sync.check_local_data(inv)
    for key in ("train_config", "smoke_config"):
        path = getattr(inv, key)
        if not path.startswith(("/", "~/")) and local_config(path) is None:  # an absolute path may be the host's own
            raise LocalInputError(f"Inventory key {key!r} in {inv.path} names {path}, which is not a file in {REPO_ROOT} "
                                  "(preflight, the smoke test and train send this machine's copy).")


DEPLOY_STEPS = [  # (name, step(h, run, say)): each also a task of its own
    ("provision", lambda h, run, say: prov.provision(h.conn, h.inv, say)),
    ("sync-code", lambda h, run, say: sync.sync_code(h.target, h.inv, say)),
    ("sync-data", lambda h, run, say: sync.sync_data(h.target, h.inv, say)),
    ("preflight", lambda h, run, say: checks.preflight(h.conn, h.inv, say)),
    ("smoke-test", lambda h, run, say: checks.smoke_test(h.conn, h.inv, say, h.inv.price_of(h.target.label))),  # and the estimate
    ("upload-run", lambda h, run, say: sync.upload_run(h.target, h.inv, run["resume_from"], say)),  # only with --resume-from
    ("train", lambda h, run, say: run.update(name=start_training(h, run_name=run["name"], resume=bool(run["resume_from"])))),
]


def deploy_full_cluster(hosts, group, run_name=None, restart=False, resume_from=None, verbose=False):
    """deploy-full on a cluster: every host prepared at once (a line per host and step), then one
    worker per host in tmux with its TF_CONFIG, the chief first."""
    show_all(verbose)
    if resume_from:
        raise LocalInputError("--resume-from brings a one-host run; a cluster continues its own run with `fab -H "
                              f"{group.name} train --resume`.")
    workers = cluster.tf_config_workers(hosts[0].inv, group)
    console.rule(f"deploy-full to cluster {group.name}: {len(hosts)} workers ({', '.join(workers)})")
    name = training.valid_run_name(run_name or time.strftime("%Y%m%d-%H%M%S"))
    steps = [(n, step) for n, step in DEPLOY_STEPS if n not in ("upload-run", "train")]
    total = time.monotonic()
    try:
        cluster.prepare(hosts, steps, name, prefixed)
    except DeployError as e:
        raise DeployError(f"deploy-full stopped before training: {e}\nFix this, then run `fab -H {group.name} deploy-full` again.") from None
    cluster.launch_workers(hosts, workers, name, prefixed)
    remember_cluster(group.name)
    console.rule(f"deployed in {time.monotonic() - total:.0f} s")
    say(f"Run {name} is training on cluster {group.name} ({len(hosts)} workers; {hosts[0].target.label} is the chief). Next:")
    say("  fab monitor              # a row per worker; the cluster's state is its worst worker's")
    say("  fab fetch-results -H " + hosts[0].target.label + "   # when it is done: the chief holds the model and metrics")


@host_task(name="deploy-full", changes_host=True, before_connect=_deploy_checks, on_cluster=deploy_full_cluster,
           survey=("provision", "code", "data"),
           help={"run_name": "name of the training run (default: a timestamp)",
                 "restart": "stop a running training first (else deploy-full refuses to touch its data)",
                 "resume_from": "a run fetched with `fab fetch-results --backup` (results/<host>/<run>), or one in run storage "
                                "(s3://bucket/prefix/RUN, or its name): upload it and continue it here",
                 "verbose": "show the long steps' output (pip) as it comes"})
def deploy_full(h, run_name=None, restart=False, resume_from=None, verbose=False):
    """Provision, sync-code, sync-data, preflight, smoke-test, train: in that order, stopping at the first failure.

    Prints a line per step with its duration, and at the end the run's name and the commands
    to watch it. The host (user, address, port, key file) is remembered, so later tasks need no flags.
    With --resume-from, an upload-run step brings a run from another host (e.g. a preempted spot
    instance), or from run storage (s3://.../RUN, or a run name `fab runs` lists), and training
    continues it from its last finished (or stored) epoch. With -H CLUSTER (inventory
    `clusters:`) every host is prepared at once, then one worker per host trains as one run.
    """
    inv = h.inv
    show_all(verbose)
    console.rule(f"deploy-full to {h.target.label}")
    resumed = storage.resume_source(inv, resume_from) if resume_from else None  # checked (and downloaded) before connecting
    if run_name or resumed:
        training.refuse_new_run_name(h.conn, inv, run_name or resumed.name, resuming=bool(resumed))  # now, not after the smoke test
    say(f"data: {', '.join(str(d) for d in inv.local_data)} -> {inv.remote['data_dir']}/")
    say(f"training config: {inv.train_config}; runs: {inv.remote['runs_dir']}; tmux session: {inv.tmux_session}")
    if resumed:
        say(f"continuing run {resumed.name} from {resumed}")
    run = {"name": resumed.name if resumed else run_name, "resume_from": resumed}
    steps = [(name, step) for name, step in DEPLOY_STEPS if name != "upload-run" or resumed]
    total = time.monotonic()
    for i, (name, step) in enumerate(steps, 1):
        console.print(Text(f"[{i}/{len(steps)}] {name}", style="bold"))
        t0 = time.monotonic()
        try:
            step(h, run, say)
        except DeployError as e:
            ended = "interrupted" if isinstance(e, Interrupted) else "failed"
            console.print(Text(f"✗ {name} {ended}", style="bold red") + Text(f" after {time.monotonic() - t0:.1f} s"))
            e.args = (f"deploy-full stopped at step {name}: {e}" + ("" if isinstance(e, Interrupted) else  # it says what to run next
                      "\nFix this, then run `fab deploy-full` again (the steps before it are quick when nothing changed)."),)
            raise
        console.print(Text(f"✓ {name}", style="green") + Text(f" {time.monotonic() - t0:.1f} s"))
    remember_host(h.target)
    console.rule(f"deployed in {time.monotonic() - total:.0f} s")
    say(f"Run {run['name']} is training on {h.target.label}. Next:")
    say("  fab monitor              # state, epoch, metrics, GPU, last log lines (--follow to tail)")
    say("  fab tensorboard-tunnel   # TensorBoard at http://localhost:6006")
    say("  fab fetch-results        # when it is done: best model, metrics, logs")
