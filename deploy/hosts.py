"""Which host a task acts on, the Connection to it, and how remote paths are quoted.

    target = connect(c, inv)         # -H if given, else the last deployed host, else default_host
    target.conn.run(f"ls {rq(inv.remote['runs_dir'])}")
    ssh_command(conn)                # "ssh -p 22 -i KEY ..." for rsync -e

The last host that `deploy-full` succeeded on is remembered in `.facenet/state.json` (the
folder is $FACENET_STATE_DIR if set), so `fab monitor` needs no `-H`.
"""

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from fabric import Connection

from deploy.errors import LocalInputError
from deploy.inventory import REPO_ROOT


def state_dir():
    path = Path(os.environ.get("FACENET_STATE_DIR") or REPO_ROOT / ".facenet")
    path.mkdir(parents=True, exist_ok=True)
    return path


def remember_host(host_string):
    path = state_dir() / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"host": host_string}))
    os.replace(tmp, path)


def remembered_host():
    path = state_dir() / "state.json"
    try:
        return json.loads(path.read_text()).get("host")
    except (OSError, ValueError):
        return None


@dataclass
class Target:
    conn: Connection
    label: str  # the inventory name, or the host string as given
    host_string: str  # what to remember and to pass back as -H


def connect(c, inv):
    """A Target: the Connection to the host this task acts on (see the module docstring).

    `c` is what Fabric passes a task: a Connection when `-H` was given, else a Context. A
    -H that names an inventory host, or its address, takes that entry's key file and port
    (and its user, unless -H gave one).
    """
    config = c.config
    if isinstance(c, Connection):
        host = inv.find_host(c.original_host)
        if host is None:
            return Target(pin_host_keys(c), c.original_host, f"{c.user}@{c.original_host}:{c.port}")
        # Fabric fills in the local user name when -H has none, so a -H user equal to it cannot be
        # told apart from no user: then the inventory entry's user applies.
        explicit_user = c.user if c.user != config.user else None
        return _target(host, config, explicit_user, c.port if c.port != 22 else None)
    wanted = remembered_host() or inv.default_host
    if not wanted:
        raise LocalInputError(
            f"No host to act on: pass -H user@address, or set default_host in {inv.path}, "
            "or run `fab -H user@address deploy-full` once (it is remembered)."
        )
    host = inv.find_host(wanted)
    if host is not None:
        return _target(host, config)
    return Target(pin_host_keys(Connection(wanted, config=config, connect_timeout=15)), wanted, wanted)


def _target(host, config, user=None, port=None):
    kwargs = {"key_filename": [host.key_file]} if host.key_file else {}
    conn = Connection(host.address, user=user or host.user, port=port or host.port, config=config,
                      connect_kwargs=kwargs, connect_timeout=15)
    remembered = host.name if user is None and port is None else f"{conn.user}@{host.address}:{conn.port}"
    return Target(pin_host_keys(conn), host.name, remembered)


def known_hosts_file():
    path = state_dir() / "known_hosts"
    path.touch(exist_ok=True)
    return path


def pin_host_keys(conn):
    """Trust on first use, then refuse a changed key: paramiko saves a new host's key to the
    state dir's known_hosts (the file rsync's ssh uses too) and checks it on every later connection."""
    conn.client.load_host_keys(str(known_hosts_file()))
    return conn


def ssh_command(conn):
    """The OpenSSH command line that reaches `conn`, for `rsync -e`. Host keys are trusted on
    first use and kept in the state dir's known_hosts."""
    parts = ["ssh", "-p", str(conn.port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
             "-o", f"UserKnownHostsFile={known_hosts_file()}", "-o", "ConnectTimeout=15"]
    keys = conn.connect_kwargs.get("key_filename") or []
    for key in [keys] if isinstance(keys, str) else keys:
        parts += ["-i", str(key)]
    return shlex.join(parts)


def rsync_target(conn, remote_path):
    """user@host:path for rsync; a `~/` path becomes relative (rsync starts in the home dir)."""
    path = remote_path[2:] if remote_path.startswith("~/") else remote_path
    host = f"[{conn.host}]" if ":" in conn.host else conn.host
    return f"{conn.user}@{host}:{path}"


def rq(remote_path):
    """`remote_path` as one shell word for the remote shell; a leading `~/` still means home."""
    if remote_path == "~":
        return '"$HOME"'
    if remote_path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(remote_path[2:])
    return shlex.quote(remote_path)


def rjoin(*parts):
    return "/".join(p.rstrip("/") for p in parts)
