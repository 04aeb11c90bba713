"""The Fabric tasks: thin wrappers over deploy.{provision,sync,training,observe}.

Each docstring is the task's `fab --help TASK` text. Without -H a task acts on the host of
the last successful deploy-full, else the inventory's default_host.
"""

import contextlib
import socket
import time

from fabric import task
from invoke.exceptions import Exit
from paramiko import BadHostKeyException, SSHException
from paramiko.ssh_exception import NoValidConnectionsError
from rich.console import Console

from deploy import observe, sync, training
from deploy import provision as prov
from deploy.errors import DeployError, LocalInputError
from deploy.hosts import connect, known_hosts_file, remember_host
from deploy.inventory import REPO_ROOT, load_inventory

console = Console(highlight=False, soft_wrap=True)


def say(message):
    """Print a line from the deploy modules as it is (no rich markup: paths and remote output may hold brackets)."""
    console.print(message, markup=False)


@contextlib.contextmanager
def loud():
    """DeployError -> its message on stderr and its exit code (see deploy.errors); SSH failures likewise."""
    try:
        yield
    except DeployError as e:
        raise Exit(f"error: {e}", code=e.exit_code) from None
    except BadHostKeyException as e:
        raise Exit(f"error: the SSH host key of {e.hostname} is not the one seen at first contact (kept in {known_hosts_file()}). "
                   "If the host was rebuilt, delete its line there and try again; if not, something is intercepting "
                   "the connection.", code=1) from None
    except (SSHException, NoValidConnectionsError, TimeoutError, ConnectionError, socket.gaierror) as e:
        raise Exit(f"error: cannot reach the host over SSH: {type(e).__name__}: {e}\n"
                   "Check the address, port, user and key (-H, -i, or hosts: in the inventory), and that the host is up.", code=1) from None


def _setup(c):
    inv = load_inventory()
    return inv, connect(c, inv)


@task
def provision(c):
    """Install missing apt packages, report the GPU, create the venv, install pinned requirements.

    Idempotent: a second run only checks (one SSH command) unless the requirements or the GPU
    count changed. Uses non-interactive sudo when not root. Fails if TensorFlow sees fewer
    GPUs than nvidia-smi, and says why that usually happens.
    """
    with loud():
        inv, target = _setup(c)
        prov.provision(target.conn, inv, say)


@task(name="sync-code")
def sync_code(c):
    """Rsync trainer/, remote_scripts/, configs/ and the setup files to remote.project_dir (only changes; stale files deleted)."""
    with loud():
        inv, target = _setup(c)
        sync.sync_code(target, inv, say)


@task(name="sync-data")
def sync_data(c):
    """Rsync the inventory's local_data dirs to remote.data_dir/<name>/ with progress, then verify files and bytes.

    A missing or empty local directory stops before anything is uploaded. An interrupted
    upload resumes where it stopped when run again.
    """
    with loud():
        inv, target = _setup(c)
        sync.sync_data(target, inv, say)


@task
def preflight(c):
    """Validate the host's copy of the data (`python -m trainer validate`); stop with its summary if it would not train."""
    with loud():
        inv, target = _setup(c)
        training.preflight(target.conn, inv, say)


@task(name="smoke-test")
def smoke_test(c):
    """Run `python -m trainer smoke` on the host (a few clips, 2 epochs, reload, predict); stop and show its output if it fails."""
    with loud():
        inv, target = _setup(c)
        training.smoke_test(target.conn, inv, say)


@task(help={"resume": "continue the last run from its backup", "restart": "stop the running training and start a new one",
            "run_name": "name of the new run (default: a timestamp)"})
def train(c, resume=False, restart=False, run_name=None):
    """Launch full training in a detached tmux session (remote_scripts/launch_training.sh).

    Refuses while a training runs: --restart replaces it, --resume continues the last run.
    The trainer's output goes to RUN_DIR/train.log; its exit code and end time to RUN_DIR/exit.json.
    """
    with loud():
        inv, target = _setup(c)
        training.launch(target.conn, inv, say, resume=resume, restart=restart, run_name=run_name)


@task(name="deploy-full", help={"run_name": "name of the training run (default: a timestamp)",
                                 "restart": "stop a running training first (else deploy-full refuses to touch its data)"})
def deploy_full(c, run_name=None, restart=False):
    """Provision, sync-code, sync-data, preflight, smoke-test, train: in that order, stopping at the first failure.

    Prints a line per step with its duration, and at the end the run's name and the commands
    to watch it. The host is remembered, so later tasks need no -H.
    """
    with loud():
        inv, target = _setup(c)
        check_local(inv)
        conn = target.conn
        console.rule(f"deploy-full to {target.label}")
        if training.session_alive(conn, inv.tmux_session):  # before sync-data rewrites the data it reads
            if not restart:
                raise DeployError(f"A training is running on {target.label} (tmux session {inv.tmux_session}); deploying now "
                                  "would change its code and data under it. `fab monitor` to watch it, `fab stop` to end it, "
                                  "or `fab deploy-full --restart` to stop it first.")
            training.stop(conn, inv, say)
        say(f"data: {', '.join(str(d) for d in inv.local_data)} -> {inv.remote['data_dir']}/")
        say(f"training config: {inv.train_config}; runs: {inv.remote['runs_dir']}; tmux session: {inv.tmux_session}")
        run = {}
        steps = [
            ("provision", lambda: prov.provision(conn, inv, say)),
            ("sync-code", lambda: sync.sync_code(target, inv, say)),
            ("sync-data", lambda: sync.sync_data(target, inv, say)),
            ("preflight", lambda: training.preflight(conn, inv, say)),
            ("smoke-test", lambda: training.smoke_test(conn, inv, say)),
            ("train", lambda: run.update(name=training.launch(conn, inv, say, run_name=run_name))),
        ]
        total = time.monotonic()
        for i, (name, step) in enumerate(steps, 1):
            console.print(f"[bold]\\[{i}/{len(steps)}] {name}[/]")
            t0 = time.monotonic()
            try:
                step()
            except DeployError as e:
                console.print(f"[bold red]✗ {name} failed[/] after {time.monotonic() - t0:.1f} s")
                e.args = (f"deploy-full stopped at step {name}: {e}\nFix this, then run `fab deploy-full` again "
                          "(the steps before it are quick when nothing changed).",)
                raise
            console.print(f"[green]✓ {name}[/] {time.monotonic() - t0:.1f} s")
        remember_host(target.host_string)
        console.rule(f"deployed in {time.monotonic() - total:.0f} s")
        say(f"Run {run['name']} is training on {target.label}. Next:")
        say("  fab monitor              # state, epoch, metrics, GPU, last log lines (--follow to tail)")
        say("  fab tensorboard-tunnel   # TensorBoard at http://localhost:6006")
        say("  fab fetch-results        # when it is done: best model, metrics, logs")


def check_local(inv):
    """Before touching the host: data dirs exist and hold *.npz, configs exist in the repo."""
    sync.check_local_data(inv)
    for key in ("train_config", "smoke_config"):
        path = getattr(inv, key)
        if not path.startswith(("/", "~/")) and not (REPO_ROOT / path).is_file():
            raise LocalInputError(f"Inventory key {key!r} in {inv.path} names {path}, which is not a file in {REPO_ROOT} "
                                  "(the code sync uploads configs/ from there).")


@task(help={"follow": "stream the log until the run ends or Ctrl-C, then show the final state",
            "run": "a run other than the current one"})
def monitor(c, follow=False, run=None):
    """One screen: host, GPU, the run's state, epoch progress with ETA, metrics, disk, last log lines.

    Exit code: 0 running or finished, 1 failed, 3 stopped, 4 vanished (tmux session gone without
    an exit record), 5 no run; scripts can poll it.
    """
    with loud():
        inv, target = _setup(c)
        info = training.run_state(target.conn, inv, run=run)
        if follow and info["state"] in ("starting", "running"):
            observe.follow(target.conn, inv, info)
            info = training.run_state(target.conn, inv, run=run)
        observe.render(info, target.label, console)
        code = info["exit_code"]
    if code:
        raise Exit(code=code)


@task(help={"lines": "how many lines", "run": "a run other than the current one"})
def logs(c, lines=50, run=None):
    """Print the last lines of the current run's train.log."""
    with loud():
        inv, target = _setup(c)
        info, text = observe.tail_log(target.conn, inv, run, lines)
        console.rule(f"{info['run_dir']}/train.log ({info['state']})")
        console.out(text, end="", highlight=False)


@task(help={"wait": "seconds to let the current epoch finish before stopping at once"})
def stop(c, wait=120):
    """Stop the training gracefully (it saves its backup and records `stopped`), then remove its tmux session.

    A second stop is harmless. Continue later with `fab train --resume`.
    """
    with loud():
        inv, target = _setup(c)
        training.stop(target.conn, inv, say, wait=wait)


@task(name="fetch-results", help={"run": "a run other than the current one", "dest": "local folder (default: results)"})
def fetch_results(c, run=None, dest="results"):
    """Rsync the run dir back (model, metrics, history, TensorBoard logs, config, split; not backup/) to DEST/<host>/<run>/.

    Prints the final metrics table (accuracy, UAR, macro F1, per-class scores) and the
    confusion matrix when the run has finished.
    """
    from trainer.report import print_metrics  # rich only: no TensorFlow needed here

    with loud():
        inv, target = _setup(c)
        local, info = observe.fetch_results(target, inv, run, dest, say)
        metrics = observe.read_metrics(local)
        if metrics:
            print_metrics(metrics, console, title=f"Run {info['run']}")
        else:
            say(f"No metrics.json yet: the run is {info['state']}.")


@task(name="tensorboard-tunnel", help={"local_port": "local port to forward (default: tensorboard.local_port, 6006)"})
def tensorboard_tunnel(c, local_port=None):
    """Start TensorBoard on the host (its 127.0.0.1 only, in tmux) if needed, and forward it to localhost until Ctrl-C."""
    with loud():
        inv, target = _setup(c)
        observe.tunnel(target.conn, inv, int(local_port or inv.tensorboard["local_port"]), say)
