"""What every task shares: `host_task` (inventory, host, lock, errors as exit codes), `say`, Ctrl-C.

    @host_task(name="sync-code", changes_host=True, survey=("code",), help=...)
    def sync_code(h, restart=False):      # h: Host (h.inv, h.target, h.conn)
        sync.sync_code(h.target, h.inv, say)

Each docstring is the task's `fab --help TASK` text. Without -H a task acts on the host of
the last successful deploy-full, else the inventory's default_host. `host_task` gives every
task its inventory, its host (named in the first line: once for the tasks of a command line), its
error handling and, for tasks that change the host, the host's lock and the refusal to work under a training.
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

from deploy.errors import DeployError, HostUnreachable, LocalInputError
from deploy.host import cluster, session
from deploy.host.connection import connect
from deploy.host.login import NO_KEY, login_failure
from deploy.host.remembered import known_hosts_file
from deploy.inventory import load_inventory
from trainer.results.visible import visible  # every text from the host: its control characters shown, never obeyed

console = Console(highlight=False, soft_wrap=True)


def say(message, style=None):
    """Print a line as plain text (paths and remote output may hold brackets: never markup; nor terminal escapes)."""
    console.print(Text(visible(message), style=style or ""))


_said = set()  # the lines said once per `fab` command line: its tasks act on one host (and share its connection)


def say_once(message, style=None):
    """`say`, unless an earlier task of this command line said the same (its host line, `fab sync-code train`)."""
    if message not in _said:
        _said.add(message)
        say(message, style)


class Host:
    """What a task body gets: the inventory, the target and its connection."""

    def __init__(self, inv, target):
        self.inv, self.target, self.conn = inv, target, target.conn


# over 50 lines on purpose: the one wrapper of every task, its steps in the order they apply
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
    `fab` invocation share the connection and the lock (deploy.host.session): `survey` names what the
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
                say_once(f"host: {target.describe()}", "dim")
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
    deploy.host.steps.StepRunner, then the host's lock is released and the task exits 130); a second one
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
    say_once(f"cluster {group.name}: " + ", ".join(f"{n} (worker {k}{', chief' if k == 0 else ''})" for k, (n, _, _) in enumerate(members)), "dim")
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
    if isinstance(e, (AuthenticationException, BadHostKeyException)) or (isinstance(e, SSHException) and str(e) == NO_KEY):
        return False
    return isinstance(e, (HostUnreachable, SSHException, NoValidConnectionsError, TimeoutError, ConnectionError, socket.gaierror, EOFError))


def as_exit(e, target=None):
    """An exception as the one line and exit code the user sees (see deploy.errors)."""
    if isinstance(e, DeployError):
        return Exit(f"error: {visible(e)}", code=e.exit_code)
    failed = login_failure(target.conn, e) if target else None  # a HostConnection says so itself (LoginFailed); others: here
    if failed is not None:
        return Exit(f"error: {visible(failed)}", code=failed.exit_code)
    if isinstance(e, AuthenticationException):  # the host answered: it is the key or the user, not the network
        return Exit(f"error: the host refused the SSH login ({e}). Check the user (-H user@host or hosts.<name>.user) and the key "
                    f"(-i KEY, or hosts.<name>.key_file): the host's authorized_keys must hold its public key.", code=LocalInputError.exit_code)
    if isinstance(e, BadHostKeyException):
        return Exit(f"error: the SSH host key of {e.hostname} is not the one seen at first contact (kept in {known_hosts_file()}). "
                    "If the host was rebuilt, delete its line there and try again; if not, something is intercepting "
                    "the connection.", code=LocalInputError.exit_code)  # nothing was done on the host
    if isinstance(e, (SSHException, NoValidConnectionsError, TimeoutError, ConnectionError, socket.gaierror, EOFError)):
        return Exit(f"error: cannot reach the host over SSH: {type(e).__name__}: {visible(e)}\n"
                    "Check the address, port, user and key (-H, -i, or hosts: in the inventory), and that the host is up.",
                    code=HostUnreachable.exit_code)
    if isinstance(e, KeyboardInterrupt):
        return Exit("Interrupted.", code=130)
    raise e
