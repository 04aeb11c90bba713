"""Which host a task acts on, the Connection to it, and how remote paths are quoted.

    target = connect(c, inv)         # -H if given, else the last deployed host, else default_host
    target.conn.run(f"ls {rq(inv.remote['runs_dir'])}")
    ssh_command(conn)                # "ssh -p 22 -i KEY ..." for rsync -e

The last host that `deploy-full` succeeded on is remembered in `.facenet/state.json` (the
folder is $FACENET_STATE_DIR if set) with its user, address, port and key file path (never
the key), so `fab monitor` needs no flags.

Every connection sends SSH keepalives (inventory `ssh:`); a host that stops answering them
closes the connection, and the task ends with `HostUnreachable` instead of hanging.
"""

import json
import os
import posixpath
import shlex
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from fabric import Connection
from fabric.runners import Remote
from paramiko import SSHException

from deploy.errors import HostUnreachable, LocalInputError
from deploy.host.login import check_key_file, key_files, key_list, login_failure  # noqa: F401 (key_files: also from here)
from deploy.inventory import REPO_ROOT
from trainer.run_format import run_format


def state_dir():
    path = Path(os.environ.get("FACENET_STATE_DIR") or REPO_ROOT / ".facenet")
    path.mkdir(parents=True, exist_ok=True)
    return path


def remember_host(target):
    """Record how to reach `target` again: inventory name or user, address, port, key file path."""
    conn = target.conn
    _remember({"label": target.label, "user": conn.user, "address": conn.host, "port": conn.port, "key_files": key_files(conn),
               "inventory_host": target.host_name})


def _remember(record):
    run_format.write_json(state_dir() / "state.json", {"host": record})


def remembered_host():
    """The remembered host record (a dict), or None."""
    path = state_dir() / "state.json"
    try:
        host = json.loads(path.read_text()).get("host")
    except (OSError, ValueError):
        return None
    if isinstance(host, str):  # written by an older version: a host string
        return {"label": host}
    return host if isinstance(host, dict) and host.get("label") else None


# A remote step's processes carry FACENET_STEP=<token>:<pgid> in their environment (the step's shell
# is the leader of its own process group: sshd starts each command in a session of its own), so
# Ctrl-C can end exactly that step's process group over a second channel (StepRunner).
END_STEP = """f=$(grep -lzx 'FACENET_STEP={token}:[0-9]*' /proc/[0-9]*/environ 2>/dev/null | head -n 1)
[ -n "$f" ] || exit 0
pg=$(tr '\\0' '\\n' < "$f" | sed -n 's/^FACENET_STEP={token}://p')
[ -n "$pg" ] && [ "$pg" -gt 1 ] || exit 0
kill -TERM "-$pg" 2>/dev/null || exit 0
i=0; while [ $i -lt 25 ] && kill -0 "-$pg" 2>/dev/null; do sleep 0.2; i=$((i + 1)); done
kill -KILL "-$pg" 2>/dev/null; exit 0"""
ACTIVE_STEPS = {}  # token -> HostConnection: the remote steps running now, in every thread
ENDED_STEPS = set()  # tokens of steps ended by an interrupt: their run() raises KeyboardInterrupt
STEPS_LOCK = threading.Lock()


class StepRunner(Remote):
    """Fabric's remote runner, except that Ctrl-C ends the remote step's process group (SIGTERM, then
    SIGKILL) instead of waiting for it to finish; the step's `run` then raises KeyboardInterrupt."""

    def send_interrupt(self, interrupt):
        token = getattr(self.context.steps, "current", None)
        if token is None:
            raise interrupt
        self.context.end_step(token)


def end_all_steps():
    """Ctrl-C on several hosts at once (a cluster): end every remote step still running."""
    with STEPS_LOCK:
        running = list(ACTIVE_STEPS.items())
    for token, conn in running:
        conn.end_step(token)


class HostConnection(Connection):
    """A Fabric Connection with a heartbeat: every `keepalive_interval` s it asks the server for a
    reply; after `keepalive_count_max` intervals without one it closes the transport, so a command
    blocked on a dead network returns, and `run` raises HostUnreachable. Ctrl-C during `run` ends
    the remote command's process group within a few seconds, then raises KeyboardInterrupt."""

    keepalive_interval = 15
    keepalive_count_max = 3
    rsync_timeout = 120
    heartbeat = None
    label = None
    touch_first = None  # a remote file the next command touches as well (the autostop heartbeat, deploy.host.agent)
    answers = None  # what the invocation's bookkeeping command found, for the steps that would ask it (deploy.host.session)
    steps = None
    ssh_config_file = None  # the OpenSSH client config this connection follows (inventory ssh.config_file, fab -S): rsync's too

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps = threading.local()  # .current: the token of the step this thread runs
        self.answers = {}

    def _remote_runner(self):
        return StepRunner(context=self, inline_env=self.inline_ssh_env)

    def open(self):
        try:
            result = super().open()
        except SSHException as e:  # a login that came to nothing is bad input, not a network fault (deploy.host.login)
            gateway = self.gateway if isinstance(self.gateway, Connection) and not self.gateway.is_connected else None
            failed = login_failure(gateway or self, e)  # a bastion (ProxyJump) that refused us: its own login
            if failed is None:
                raise
            raise failed from None
        transport = self.client.get_transport()
        if transport is not None and (self.heartbeat is None or not self.heartbeat.is_alive()):
            self.heartbeat = Heartbeat(transport, self.keepalive_interval, self.keepalive_count_max)
            self.heartbeat.start()
        return result

    def check_alive(self):
        if self.heartbeat is not None and self.heartbeat.dead:
            raise HostUnreachable(f"Lost the connection to {self.label or self.host}: no answer to SSH keepalives for "
                                  f"{self.keepalive_interval * self.keepalive_count_max} s (network down, or the host stopped).")

    def run(self, command, **kwargs):
        if self.touch_first:  # on the task's first command: no round trip of its own
            path, self.touch_first = self.touch_first, None
            command = f"{{ mkdir -p {rq(posixpath.dirname(path))} && touch {rq(path)}; }} 2>/dev/null; {command}"
        token = uuid.uuid4().hex[:16]
        with STEPS_LOCK:
            ACTIVE_STEPS[token] = self
        self.steps.current = token
        try:
            result = super().run(f"export FACENET_STEP={token}:$$; {command}", **kwargs)
        except Exception:
            if token in ENDED_STEPS:
                raise KeyboardInterrupt from None
            self.check_alive()  # a command cut off by a dead connection is that, not its own failure
            raise
        finally:
            self.steps.current = None
            with STEPS_LOCK:
                ACTIVE_STEPS.pop(token, None)
        if token in ENDED_STEPS:
            raise KeyboardInterrupt
        self.check_alive()
        return result

    def end_step(self, token):
        """End the remote step `token`: its process group gets SIGTERM, then SIGKILL after 5 s."""
        with STEPS_LOCK:
            if token in ENDED_STEPS:
                return
            ENDED_STEPS.add(token)
        try:
            Connection.run(self, END_STEP.format(token=token), hide=True, warn=True, in_stream=False, timeout=20)
        except Exception:  # noqa: BLE001 - a dead connection ends the remote step anyway (its channel closes)
            pass


class Heartbeat(threading.Thread):
    """Asks the server for a reply to a keepalive request (as OpenSSH's ServerAliveInterval does)."""

    def __init__(self, transport, interval, count_max):
        super().__init__(daemon=True, name="ssh-heartbeat")
        self.transport, self.interval, self.count_max = transport, interval, count_max
        self.dead = False

    def run(self):
        while self.transport.is_active():
            answered = threading.Event()

            def ask(answered=answered):
                self.transport.global_request("keepalive@openssh.com", wait=True)  # OpenSSH answers "failure": any answer counts
                answered.set()

            threading.Thread(target=ask, daemon=True).start()
            if not answered.wait(self.interval * self.count_max):
                if self.transport.is_active():
                    self.dead = True
                    self.transport.close()
                return
            time.sleep(self.interval)


@dataclass
class Target:
    conn: HostConnection
    host_name: str | None = None  # the inventory entry it is, whose own remote.* paths apply (Inventory.for_host)

    @property
    def label(self):
        """The inventory name, or user@address:port."""
        return self.conn.label

    def describe(self):
        c = self.conn
        keys = key_files(c)
        where = f"{c.user}@{c.host}:{c.port}"
        text = where if self.label == where else f"{self.label} ({where})"
        return text + (f", key {keys[0]}" if keys else "")


def connect(c, inv):
    """A Target: the Connection to the host this task acts on (see the module docstring).

    `c` is what Fabric passes a task: a Connection when `-H` was given, else a Context. A
    -H that names an inventory host, or its address, takes that entry's port, user and key
    file, unless the command line gives its own (user@, :port, -i): what it says wins.
    The Target names the inventory entry, whose own paths (`hosts.<name>.remote`) apply.
    """
    config = c.config
    if isinstance(c, Connection):
        explicit_port = c.port if c.port != 22 else None  # -H host:PORT (Fabric fills in 22 when there is none)
        # Fabric fills in the local user name when -H has none, so a -H user equal to it cannot be
        # told apart from no user: then the inventory entry's (or the remembered host's) user applies.
        explicit_user = c.user if c.user != config.user else None
        host = inv.find_host(c.original_host) or inv.find_host(c.host, explicit_port)
        if host is None:
            record = remembered_as(c.host, explicit_user, explicit_port)  # the remembered host, named by its address
            if record is None:
                target = _make(inv, config, c.host, c.user, c.port, key_files(c), label=None)
            else:
                target = _make(inv, config, c.host, explicit_user or record["user"], explicit_port or record["port"],
                               given_keys(config) or record.get("key_files") or key_files(c), label=None)
            refuse_unknown_name(c, target.conn, inv)
            return target
        keys = command_line_keys() or ([host.key_file] if host.key_file else key_files(c))
        return _make(inv, config, host.address, explicit_user or host.user, explicit_port or host.port, keys,
                     label=host.name if not (explicit_user or explicit_port) else None, host_name=host.name)
    record = remembered_host()
    if record is None and inv.default_host:
        record = {"label": inv.default_host}
    if record is None:
        raise LocalInputError(
            f"No host to act on: pass -H user@address, or set default_host in {inv.path}, "
            "or run `fab -H user@address deploy-full` once (it is remembered)."
        )
    host = inv.find_host(record["label"])
    if host is not None:  # an inventory name: its entry as it is now (an EC2 instance gets a new address after a stop)
        return _make(inv, config, host.address, host.user, host.port, [host.key_file] if host.key_file else [], label=host.name,
                     host_name=host.name)
    if "address" not in record:  # a host string remembered by an older version
        probe = Connection(record["label"], config=config)
        return _make(inv, config, probe.host, probe.user, probe.port, key_files(probe), label=None)
    entry = record.get("inventory_host")
    return _make(inv, config, record["address"], record.get("user"), record.get("port", 22), record.get("key_files") or [],
                 label=record["label"], host_name=entry if entry in inv.hosts else None)


def remembered_as(address, user=None, port=None):
    """The remembered host's record if it is `address` (and `user`, `port` where given), else None: `fab -H` naming
    the host that deploy-full remembered logs in with its key, as `fab` without -H does."""
    record = remembered_host()
    if not record or record.get("address") != address or not record.get("user") or not record.get("port"):
        return None
    if (user is not None and user != record["user"]) or (port is not None and port != record["port"]):
        return None
    return record


def refuse_unknown_name(c, conn, inv):
    """-H named no inventory host: refuse, before any connection, a name that neither an OpenSSH config (its HostName,
    ProxyJump or ProxyCommand: a bastion may resolve what this machine cannot) nor the resolver knows. A resolver that
    does not answer is left to the connection (a network fault, exit 6)."""
    if any(x.gateway or x.host != x.original_host for x in (c, conn)):
        return
    try:
        socket.getaddrinfo(conn.host, conn.port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        if e.errno not in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            return
        known = f"hosts: {', '.join(inv.hosts) or 'none'}" + (f"; clusters: {', '.join(inv.clusters)}" if inv.clusters else "")
        via = f", nor a Host with a HostName in {conn.ssh_config_file}" if conn.ssh_config_file else ""
        raise LocalInputError(f"{c.original_host} is not a host of {inv.path} ({known}{via}) and does not resolve as an address: "
                              f"{e.strerror or e}.\nName an inventory host (-H NAME), add it under hosts: with its address, "
                              "or give its IP address (-H user@address).") from None


def given_keys(config):
    """The key files given for whichever host: `fab -i`, or connect_kwargs.key_filename of a Fabric config file."""
    return command_line_keys() or key_list(config.connect_kwargs.get("key_filename"))


def command_line_keys():
    """The key files given with `fab -i` (none outside a `fab` run)."""
    from fabric.main import program

    core = getattr(program, "core", None)
    keys = core[0].args.identity.value if core and "identity" in core[0].args else None
    return [str(k) for k in keys] if keys else []


def connect_host(config, inv, name):
    """A Target for the inventory host `name` (a cluster's member)."""
    host = inv.hosts[name]
    return _make(inv, config, host.address, host.user, host.port, [host.key_file] if host.key_file else [], label=name, host_name=name)


def remember_cluster(name):
    """Later tasks without -H act on the cluster `name` that deploy-full went to."""
    _remember({"label": name, "cluster": True})


def _make(inv, config, address, user, port, keys, label, host_name=None):
    for key in keys:
        check_key_file(key)
    kwargs = {"key_filename": list(keys)} if keys else {}
    config, config_file = with_ssh_config(config, inv.ssh.get("config_file"))
    # port 22 is "not set": an ssh config's Port for this address applies, as with OpenSSH
    conn = HostConnection(address, user=user, port=port if port != 22 else None, config=config, connect_kwargs=kwargs,
                          connect_timeout=inv.ssh["connect_timeout"])
    conn.ssh_config_file = config_file
    conn.keepalive_interval, conn.keepalive_count_max = inv.ssh["keepalive_interval"], inv.ssh["keepalive_count_max"]
    conn.rsync_timeout = inv.ssh["rsync_timeout"]
    conn.label = label or f"{conn.user}@{conn.host}:{conn.port}"
    return Target(pin_host_keys(conn), host_name)


def with_ssh_config(config, path):
    """(`config` reading the OpenSSH client config `path` instead of ~/.ssh/config, as `ssh -F path` does; path),
    or (`config`, the file `fab -F` gave, if any) when `path` is None. Host aliases, HostName, Port, ProxyJump
    (a bastion) then apply to Fabric's connections and to rsync's ssh alike."""
    if not path:
        return config, getattr(config, "_runtime_ssh_path", None)
    from paramiko import SSHConfig

    config = config.clone()
    config.set_runtime_ssh_path(path)
    config._set(base_ssh_config=SSHConfig.from_path(path))  # as Config.load_ssh_config does for `fab -S`, which clone() skips
    return config, path


def known_hosts_file():
    path = state_dir() / "known_hosts"
    path.touch(exist_ok=True)
    return path


def forget_host_keys(addresses):
    """Drop the kept host keys of `addresses` (any port): a new EC2 instance may get an address an earlier one had."""
    path = known_hosts_file()
    lines = path.read_text().splitlines(keepends=True)

    def names(line):
        return {n.split("]:")[0].lstrip("[") for n in line.split(" ", 1)[0].split(",")}

    kept = [line for line in lines if not names(line) & set(addresses)]
    if len(kept) != len(lines):
        run_format.write_atomic(path, "".join(kept))


def pin_host_keys(conn):
    """Trust on first use, then refuse a changed key: paramiko saves a new host's key to the
    state dir's known_hosts (the file rsync's ssh uses too) and checks it on every later connection."""
    conn.client.load_host_keys(str(known_hosts_file()))
    return conn


def ssh_command(conn):
    """The OpenSSH command line that reaches `conn`, for `rsync -e`. Host keys are trusted on
    first use and kept in the state dir's known_hosts; keepalives as for paramiko."""
    parts = ["ssh", "-p", str(conn.port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
             "-o", f"UserKnownHostsFile={known_hosts_file()}", "-o", f"ConnectTimeout={conn.connect_timeout}",
             "-o", f"ServerAliveInterval={conn.keepalive_interval}", "-o", f"ServerAliveCountMax={conn.keepalive_count_max}"]
    if conn.ssh_config_file:
        parts += ["-F", str(conn.ssh_config_file)]
    for key in key_files(conn):
        parts += ["-i", key]
    return shlex.join(parts)


def rsync_target(conn, remote_path):
    """user@host:path for rsync; a `~/` path becomes relative (rsync starts in the home dir)."""
    path = remote_path[2:] if remote_path.startswith("~/") else remote_path
    host = conn.original_host if conn.ssh_config_file else conn.host  # ssh -F resolves the name as Fabric did (HostName, ProxyJump)
    host = f"[{host}]" if ":" in host else host
    return f"{conn.user}@{host}:{path}"


# The host's system python3, for which the stdlib-only host scripts are written (`python3` on PATH where there is
# none): a user's shim on PATH (pyenv, asdf) would cost up to a second on every command that runs one.
PYTHON3 = '"$(command -v /usr/bin/python3 || command -v python3)"'


def rq(remote_path):
    """`remote_path` as one shell word for the remote shell; a leading `~/` still means home."""
    if remote_path == "~":
        return '"$HOME"'
    if remote_path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(remote_path[2:])
    return shlex.quote(remote_path)


def rjoin(*parts):
    return "/".join(p.rstrip("/") for p in parts)
