"""The Fabric tasks: thin wrappers over deploy.{provision,sync,training,observe}.

Each docstring is the task's `fab --help TASK` text. Without -H a task acts on the host of
the last successful deploy-full, else the inventory's default_host. `host_task` gives every
task its inventory, its host (named in the first line it prints), its error handling and,
for tasks that change the host, the host's lock and the refusal to work under a training.
"""

import contextlib
import functools
import os
import signal
import socket
import threading
import time

from fabric import task
from invoke.exceptions import Exit
from paramiko import AuthenticationException, BadHostKeyException, SSHException
from paramiko.ssh_exception import NoValidConnectionsError
from rich.console import Console
from rich.text import Text

from deploy import agent, cluster, ledger, lock, observe, session, storage, sync, training
from deploy import provision as prov
from deploy.errors import DeployError, HostUnreachable, LocalInputError
from deploy.hosts import connect, key_files, known_hosts_file, remember_cluster, remember_host
from deploy.inventory import REPO_ROOT, load_inventory
from trainer.results.run_view import MALFORMED, render  # the monitor screen; the host's monitor_training.sh draws the same
from trainer.results.visible import visible  # every text from the host: its control characters shown, never obeyed

console = Console(highlight=False, soft_wrap=True)


def say(message, style=None):
    """Print a line as plain text (paths and remote output may hold brackets: never markup; nor terminal escapes)."""
    console.print(Text(visible(message), style=style or ""))


class Host:
    """What a task body gets: the inventory, the target and its connection."""

    def __init__(self, inv, target):
        self.inv, self.target, self.conn = inv, target, target.conn


def host_task(name=None, changes_host=False, before_connect=None, on_cluster=None, without_host=None, survey=(),
              leaves_training=False, **task_kwargs):
    """Fabric's `task`, plus: inventory, host and its first line, errors as exit codes (deploy.errors),
    and for `changes_host` tasks the host lock and the --restart rule (refuse under a training).

    The body is `body(h: Host, ...)`; a `restart` keyword, when the task has one, stops a running
    training first. `before_connect(inv, **kwargs)` runs local checks before anything reaches the host.
    When -H names an inventory cluster, `on_cluster(hosts: [Host], cluster, ...)` runs instead, with
    every host locked (for `changes_host`); a task without it refuses a cluster. `without_host(inv, error,
    ...)` runs instead of the body when the host cannot be reached (`error`: why), or at once (error None)
    when the task's `from_storage` option is given: e.g. fetch-results from run storage. The tasks of one
    `fab` invocation share the connection and the lock (deploy.session): `survey` names what the
    bookkeeping command asks the host for the task's steps, `leaves_training` that it never
    starts nor stops a training."""
    def decorate(body):
        task_name = name or body.__name__.replace("_", "-")
        session.register(task_name, changes_host, survey, leaves_training)

        @functools.wraps(body)
        def run(c, *args, **kwargs):
            target = inv = None
            try:
                refuse_several_hosts()
                inv = load_inventory()
                if without_host is not None and kwargs.get("from_storage"):
                    return without_host(inv, None, *args, **kwargs)
                group = cluster.named_cluster(c, inv)
                if group is not None:
                    if before_connect:
                        before_connect(inv, **kwargs)
                    return run_on_cluster(task_name, on_cluster, changes_host, inv, group, c, *args, **kwargs)
                target = session.reuse(connect(c, inv))  # an earlier task of this invocation's connection, if any
                inv = inv.for_host(target.host_name)  # that host's own folders (hosts.<name>.remote) for every step
                say(f"host: {target.describe()}", "dim")
                if before_connect:
                    before_connect(inv, **kwargs)
                h = Host(inv, target)
                # autostop waits while the task runs (heartbeat, lock lease); the lock and the training check (changes_host)
                with session.task(h, task_name, changes_host, kwargs.get("restart", False), say):
                    return body(h, *args, **kwargs)
            except Exit:
                session.end_all()
                raise
            except BaseException as e:
                session.end_all()  # a failure before the task began: the lock held for it goes too
                if without_host is not None and inv is not None and unreachable(e):
                    try:
                        return without_host(inv, e, *args, **kwargs)
                    except Exit:
                        raise
                    except BaseException as e2:
                        raise as_exit(e2) from None
                raise as_exit(e, target) from None

        def run_interruptibly(c, *args, **kwargs):
            with interrupts_end_the_step():
                return run(c, *args, **kwargs)

        return task(name=task_name, **task_kwargs)(functools.wraps(body)(run_interruptibly))
    return decorate


@contextlib.contextmanager
def interrupts_end_the_step():
    """Ctrl-C: the first raises KeyboardInterrupt (the remote step's process group is ended, see
    deploy.hosts.StepRunner, then the host's lock is released and the task exits 130); a second one
    only says that this is under way; a third exits at once, leaving the lock for `fab unlock`."""
    pressed = []

    def on_sigint(signum, frame):
        pressed.append(time.monotonic())
        if len(pressed) == 1:
            raise KeyboardInterrupt
        if len(pressed) == 2:
            say("Stopping: ending the step on the host, then releasing its lock (a few seconds). Ctrl-C again quits at once.", "yellow")
            return
        say("Quit at once: the host's lock may stay; if so, `fab unlock` once nothing runs there.", "bold red")
        os._exit(130)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_on_cluster(task_name, on_cluster, changes_host, inv, group, c, *args, **kwargs):
    """A task on every host of `group`: locked together (changes_host), then `on_cluster(hosts, group, ...)`."""
    if on_cluster is None:
        raise LocalInputError(f"`fab {task_name}` acts on one host; {group.name} is a cluster ({', '.join(group.hosts)}). "
                              f"Run it on each: fab -H {group.hosts[0]} {task_name}. On a cluster: deploy-full, train, monitor, stop.")
    members = cluster.connect_members(c, inv, group)
    say(f"cluster {group.name}: " + ", ".join(f"{n} (worker {k}{', chief' if k == 0 else ''})" for k, (n, _, _) in enumerate(members)), "dim")
    hosts = [Host(hinv, session.reuse(target)) for _, target, hinv in members]
    to_come = session.advance(task_name)
    with contextlib.ExitStack() as held:
        for h in hosts:  # each host locked and checked in turn; a refusal releases those before it
            held.enter_context(session.task(h, task_name, changes_host, kwargs.get("restart", False), prefixed(h), to_come))
        return on_cluster(hosts, group, *args, **kwargs)


def prefixed(h):
    """`say` with each line starting with the host's name (several hosts at once)."""
    return lambda message, style=None: [say(f"{h.target.label:<10} {line}", style) for line in str(message).splitlines() or [""]]


def refuse_several_hosts():
    """`fab -H a,b TASK` would run TASK once per host: for deploy-full, independent trainings that
    look like one. Until several hosts can train as one, a command acts on one host."""
    from fabric.main import program

    core = getattr(program, "core", None)
    hosts = core[0].args.hosts.value if core else None
    if hosts and "," in hosts:
        raise LocalInputError(f"-H names several hosts ({hosts}): each would get its own, independent run of the task "
                              "(for deploy-full: separate trainings, not one). To train on several hosts as one, name them "
                              "in inventory.yaml under clusters: (e.g. clusters: {pair: {hosts: [gpu1, gpu2]}}) and run "
                              "`fab -H pair deploy-full`; otherwise run the command once per host.")


def unreachable(e):
    """The host did not answer, or the connection to it died (not: it answered and refused the login)."""
    if isinstance(e, (AuthenticationException, BadHostKeyException)):
        return False
    return isinstance(e, (HostUnreachable, SSHException, NoValidConnectionsError, TimeoutError, ConnectionError, socket.gaierror, EOFError))


def as_exit(e, target=None):
    """An exception as the one line and exit code the user sees (see deploy.errors)."""
    if isinstance(e, DeployError):
        return Exit(f"error: {visible(e)}", code=e.exit_code)
    if isinstance(e, AuthenticationException):  # the host answered: it is the key or the user, not the network
        conn = target.conn if target else None
        who = f"user {conn.user!r} at {conn.host}:{conn.port}" if conn else "the host"
        keys = ", ".join(key_files(conn)) if conn and key_files(conn) else "none given (only ssh-agent and ~/.ssh defaults)"
        return Exit(f"error: the host refused the SSH login of {who} with key {keys} ({e}). Check the user (-H user@host or "
                    "hosts.<name>.user) and the key (-i, or hosts.<name>.key_file): the host's authorized_keys must hold its public key.",
                    code=LocalInputError.exit_code)
    if isinstance(e, BadHostKeyException):
        return Exit(f"error: the SSH host key of {e.hostname} is not the one seen at first contact (kept in {known_hosts_file()}). "
                    "If the host was rebuilt, delete its line there and try again; if not, something is intercepting "
                    "the connection.", code=1)
    if isinstance(e, (SSHException, NoValidConnectionsError, TimeoutError, ConnectionError, socket.gaierror, EOFError)):
        return Exit(f"error: cannot reach the host over SSH: {type(e).__name__}: {visible(e)}\n"
                    "Check the address, port, user and key (-H, -i, or hosts: in the inventory), and that the host is up.",
                    code=HostUnreachable.exit_code)
    if isinstance(e, KeyboardInterrupt):
        return Exit("Interrupted.", code=130)
    raise e


RESTART = {"restart": "stop the running training first (else the task refuses to change what it uses)"}


@host_task(changes_host=True, survey=("provision",), leaves_training=True, help=RESTART)
def provision(h, restart=False):
    """Install missing apt packages, report the GPU, create the venv, install pinned requirements.

    Idempotent: a second run only checks (one SSH command) unless the requirements or the GPU
    count changed. Uses non-interactive sudo when not root. Fails if nvidia-smi is broken (unless
    allow_cpu_training) or if TensorFlow sees fewer GPUs than nvidia-smi, and says why.
    """
    prov.provision(h.conn, h.inv, say)


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
    training.preflight(h.conn, h.inv, say)


@host_task(name="smoke-test", changes_host=True, help=RESTART)
def smoke_test(h, restart=False):
    """Run `python -m trainer smoke` on the host (a few clips, 2 epochs, reload, predict); stop and say why if it fails.

    Then it times the training config's step on the host and prints the estimated time and cost
    of the full training (epochs x steps x price_per_hour).
    """
    training.smoke_test(h.conn, h.inv, say, h.inv.price_of(h.target.label))


def _run_name(inv, run_name=None, folds=None, resume=False, **_):
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


@host_task(changes_host=True, before_connect=_run_name, on_cluster=train_cluster,
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


def _deploy_checks(inv, run_name=None, resume_from=None, **_):
    """Before touching the host: data dirs exist and hold *.npz, configs exist in the repo, the run name is valid,
    a run to resume was fetched with its backup."""
    _run_name(inv, run_name)
    if resume_from is not None:
        if run_name is not None:
            raise LocalInputError("--resume-from continues a run under its own name: drop --run-name.")
        sync.check_run_to_resume(storage.resume_source(inv, resume_from, say=say))  # s3://.../RUN: downloaded first
    sync.check_local_data(inv)
    for key in ("train_config", "smoke_config"):
        path = getattr(inv, key)
        if not path.startswith(("/", "~/")) and not (REPO_ROOT / path).is_file():
            raise LocalInputError(f"Inventory key {key!r} in {inv.path} names {path}, which is not a file in {REPO_ROOT} "
                                  "(the code sync uploads configs/ from there).")


DEPLOY_STEPS = [  # (name, step(h, run, say)): each also a task of its own
    ("provision", lambda h, run, say: prov.provision(h.conn, h.inv, say)),
    ("sync-code", lambda h, run, say: sync.sync_code(h.target, h.inv, say)),
    ("sync-data", lambda h, run, say: sync.sync_data(h.target, h.inv, say)),
    ("preflight", lambda h, run, say: training.preflight(h.conn, h.inv, say)),
    ("smoke-test", lambda h, run, say: training.smoke_test(h.conn, h.inv, say, h.inv.price_of(h.target.label))),  # and the estimate
    ("upload-run", lambda h, run, say: sync.upload_run(h.target, h.inv, run["resume_from"], say)),  # only with --resume-from
    ("train", lambda h, run, say: run.update(name=start_training(h, run_name=run["name"], resume=bool(run["resume_from"])))),
]


def deploy_full_cluster(hosts, group, run_name=None, restart=False, resume_from=None):
    """deploy-full on a cluster: every host prepared at once (a line per host and step), then one
    worker per host in tmux with its TF_CONFIG, the chief first."""
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
                                "(s3://bucket/prefix/RUN, or its name): upload it and continue it here"})
def deploy_full(h, run_name=None, restart=False, resume_from=None):
    """Provision, sync-code, sync-data, preflight, smoke-test, train: in that order, stopping at the first failure.

    Prints a line per step with its duration, and at the end the run's name and the commands
    to watch it. The host (user, address, port, key file) is remembered, so later tasks need no flags.
    With --resume-from, an upload-run step brings a run from another host (e.g. a preempted spot
    instance), or from run storage (s3://.../RUN, or a run name `fab runs` lists), and training
    continues it from its last finished (or stored) epoch. With -H CLUSTER (inventory
    `clusters:`) every host is prepared at once, then one worker per host trains as one run.
    """
    inv = h.inv
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
            console.print(Text(f"✗ {name} failed", style="bold red") + Text(f" after {time.monotonic() - t0:.1f} s"))
            e.args = (f"deploy-full stopped at step {name}: {e}\nFix this, then run `fab deploy-full` again "
                      "(the steps before it are quick when nothing changed).",)
            raise
        console.print(Text(f"✓ {name}", style="green") + Text(f" {time.monotonic() - t0:.1f} s"))
    remember_host(h.target)
    console.rule(f"deployed in {time.monotonic() - total:.0f} s")
    say(f"Run {run['name']} is training on {h.target.label}. Next:")
    say("  fab monitor              # state, epoch, metrics, GPU, last log lines (--follow to tail)")
    say("  fab tensorboard-tunnel   # TensorBoard at http://localhost:6006")
    say("  fab fetch-results        # when it is done: best model, metrics, logs")


def monitor_cluster(hosts, group, follow=False, run=None):
    """monitor on a cluster: the chief's screen, then a row per worker and the cluster's state (its worst worker's)."""
    def states():
        return cluster.each(hosts, lambda h: training.run_state(h.conn, h.inv, run=run))

    infos = states()
    if follow and infos[0]["state"] in ("starting", "running"):  # the chief's log: it prints every epoch of the run
        observe.follow(hosts[0].conn, hosts[0].inv, infos[0])
        infos = states()
    chief = infos[0]
    chief["price_per_hour"] = hosts[0].inv.price_of(hosts[0].target.label)
    render(chief, hosts[0].target.label, console)
    console.print(cluster.worker_table(group, hosts, infos))
    say(cluster.cost_line(hosts, infos))
    line, code = cluster.cluster_verdict(infos)
    say(line, "bold red" if code else "bold")
    if code:
        raise Exit(code=code)


@host_task(help={"follow": "stream the log until the run ends or Ctrl-C, then show the final state",
                 "run": "a run other than the current one"}, on_cluster=monitor_cluster)
def monitor(h, follow=False, run=None):
    """One screen: host, GPU, the run's state, epoch progress with ETA, metrics, disk, last log lines.

    Also the host's uptime, its cost so far and to the end of the run (price_per_hour), the EC2
    instance type and whether it is spot, and when autostop powers the host off.
    Exit code: 0 running or finished, 1 failed, 3 stopped, 4 vanished (no process of the run lives and
    it left no exit record), 5 no run, 6 host unreachable, 7 preempted (spot), 8 stalled (its processes
    live but status.json is older than stall_minutes); scripts can poll it.
    On a cluster: a row per worker; the state and exit code are those of its worst worker.
    """
    info = training.run_state(h.conn, h.inv, run=run)
    if follow and info["state"] in ("starting", "running"):
        observe.follow(h.conn, h.inv, info)
        info = training.run_state(h.conn, h.inv, run=run)
    info["price_per_hour"] = h.inv.price_of(h.target.label)  # the inventory as it is now
    render(info, h.target.label, console)
    if info["exit_code"]:
        raise Exit(code=info["exit_code"])


@host_task(help={"lines": "how many lines", "run": "a run other than the current one"})
def logs(h, lines=50, run=None):
    """Print the last lines of the current run's train.log."""
    info, text = observe.tail_log(h.conn, h.inv, run, lines)
    console.rule(Text(visible(f"{info['run_dir']}/train.log ({info['state']})")))
    console.out(visible(text), end="", highlight=False)


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


def fetch_stored(inv, error, run=None, dest="results", backup=False, from_storage=False):
    """fetch-results from run storage: with --from-storage, or when the host cannot be reached."""
    if error is not None and (run is None or not storage.enabled(inv)):
        hint = ("; with run storage, `fab fetch-results --run NAME` reads the run from there (`fab runs` lists them)"
                if storage.enabled(inv) else "")
        raise as_exit(error) if not hint else HostUnreachable(f"{as_exit(error).message.removeprefix('error: ')}{hint}") from None
    if run is None:
        raise LocalInputError("--from-storage needs --run NAME (`fab runs` lists the runs in storage).")
    training.valid_run_name(run, "--run")
    if error is not None:
        say(f"The host cannot be reached ({as_exit(error).message.removeprefix('error: ').splitlines()[0]}); "
            f"reading run {run} from storage instead.", "yellow")
    local, pointer = storage.fetch_run(inv, run, dest, say, backup=backup)
    show_results(local, run, pointer["state"])


@host_task(name="fetch-results", without_host=fetch_stored,
           help={"run": "a run other than the current one", "dest": "local folder (default: results)",
                 "backup": "also bring backup/ (the last finished epoch), to continue the run on another host",
                 "from_storage": "read the run (--run) from run storage (storage.url), not from the host"})
def fetch_results(h, run=None, dest="results", backup=False, from_storage=False):
    """Rsync the run dir back (model, metrics, history, TensorBoard logs, config, split; backup/ with --backup) to DEST/<host>/<run>/.

    Prints the final metrics table (accuracy, UAR, macro F1, per-class scores), the confusion
    matrix and the run's compute hours and cost when the run has finished. A run fetched with
    --backup continues elsewhere: `fab -H other deploy-full --resume-from DEST/<host>/<run>`.
    With run storage (storage.url), a --run that the host cannot give (it is unreachable, or no
    longer holds the run) is read from storage, and the first line says so; --from-storage skips the host.
    """
    if run:
        training.valid_run_name(run, "--run")
    if run and storage.enabled(h.inv):
        try:
            held = training.run_state(h.conn, h.inv, run=run, log_lines=0, quick=True).get("run_dir")
            why = f"holds no run {run}"
        except DeployError as e:  # the host answers but cannot tell (no code synced, a broken venv): storage can
            if isinstance(e, HostUnreachable):
                raise
            held, why = None, f"cannot tell about run {run} ({str(e).splitlines()[0][:200]})"
        if not held:
            say(f"The host {h.target.label} {why}; reading it from storage instead.", "yellow")
            return fetch_stored(h.inv, None, run=run, dest=dest, backup=backup)
    local, info = observe.fetch_results(h.target, h.inv, run, dest, say, backup=backup)
    ledger.record_fetch(h.target.label, info)  # `fab down` deletes a host only with its runs fetched after they ended
    if not ledger.record_fetch_on_host(h.conn, h.inv, info):  # autostop's guard on a host whose poweroff deletes it
        say("note: the host did not record the fetch (is its code synced?); autostop there may wait for it", "yellow")
    show_results(local, info["run"], info["state"])


def show_results(local, run, state):
    """The fetched run's metrics table (or its cross-validation's), and where its pictures are."""
    from trainer.results.report import print_cv, print_run_metrics  # rich only: no TensorFlow needed here

    metrics, cv = observe.read_json(local / "metrics.json"), observe.read_json(local / "cv.json")
    try:
        if cv:
            print_cv(cv, console, title=f"Run {run}, cross-validation")
        elif metrics:
            print_run_metrics(metrics, console, title=f"Run {run}")
        else:
            say(f"No metrics.json yet: the run is {state}.")
    except MALFORMED as e:  # a run file edited or damaged on the host: name it, no traceback
        raise DeployError(f"{local / ('cv.json' if cv else 'metrics.json')} does not read as a results file of this version "
                          f"({type(e).__name__}: {e}); the run's files are in {local}.") from None
    pictures = sorted(local.glob("*.png")) + sorted(local.glob("fold-*/*.png"))
    if pictures:
        say(f"Pictures: {', '.join(visible(p.relative_to(local), layout='') for p in pictures)} in {local}")  # names from the host


@host_task(name="tensorboard-tunnel", help={"local_port": "local port to forward (default: tensorboard.local_port, 6006)"})
def tensorboard_tunnel(h, local_port=None):
    """Start TensorBoard on the host (its 127.0.0.1 only, in tmux) if needed, and forward it to localhost until Ctrl-C."""
    observe.tunnel(h.conn, h.inv, int(local_port or h.inv.tensorboard["local_port"]), say)


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
