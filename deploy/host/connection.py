"""Which host a task acts on, the Connection to it, and how rsync's ssh reaches it.

    target = connect(c, inv)         # -H if given, else the last deployed host, else default_host
    target.conn.run(f"ls {rq(inv.remote['runs_dir'])}")
    ssh_command(conn)                # "ssh -p 22 -i KEY ..." for rsync -e

Without -H, the host is the one `deploy-full` last succeeded on (deploy.host.remembered keeps it in the state
folder), so `fab monitor` needs no flags.

Every connection sends SSH keepalives (inventory `ssh:`, deploy.host.heartbeat); a host that stops answering them
closes the connection, and the task ends with `HostUnreachable` instead of hanging. Ctrl-C ends the remote step
(deploy.host.steps). Remote paths are quoted by deploy.host.quoting.
"""

import logging
import posixpath
import shlex
import socket
import threading
from dataclasses import dataclass

from fabric import Connection
from paramiko import SSHException

from deploy.errors import HostUnreachable, LocalInputError
from deploy.host import steps
from deploy.host.heartbeat import Heartbeat
from deploy.host.login import check_key_file, key_files, key_list, login_failure
from deploy.host.quoting import rq
from deploy.host.remembered import known_hosts_file, remembered_as, remembered_host

# paramiko logs a host that does not answer ("Error reading SSH protocol banner", a reset) with its traceback through
# `logging`; with no handler of ours, Python's last-resort handler would print it. The task's one line
# (HostUnreachable, the sweep's "not answering") says it instead.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False


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
        return steps.StepRunner(context=self, inline_env=self.inline_ssh_env)

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
        token = steps.begin(self)
        try:
            result = super().run(steps.step_env(token) + command, **kwargs)
        except Exception:
            if steps.was_ended(token):
                raise KeyboardInterrupt from None
            self.check_alive()  # a command cut off by a dead connection is that, not its own failure
            raise
        finally:
            steps.finish(self, token)
        if steps.was_ended(token):
            raise KeyboardInterrupt
        self.check_alive()
        return result


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


def pin_host_keys(conn):
    """Trust on first use, then refuse a changed key: paramiko saves a new host's key to the
    state dir's known_hosts (the file rsync's ssh uses too) and checks it on every later connection."""
    conn.client.load_host_keys(str(known_hosts_file()))
    return conn


def open_channel(conn, command):
    """A session channel of `conn` running `command`: for a remote process the task talks with while it works (the
    bookkeeping helper, the venv's lock holder). Its reads wait as `conn.run`'s do: a host that stops answering is lost
    by the connection's keepalives."""
    conn.open()
    channel = conn.transport.open_session(timeout=conn.connect_timeout or 30)
    try:
        channel.settimeout(None)
        channel.exec_command(command)
    except BaseException:
        channel.close()
        raise
    return channel


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
