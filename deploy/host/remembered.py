"""What the laptop keeps of the hosts between tasks, in the state folder (deploy.paths.state_dir).

    remember_host(target)            # state.json: the last host deploy-full succeeded on, so `fab monitor` needs no flags
    remembered_host()                # its record: label, user, address, port, key file paths (never the key), or None
    known_hosts_file()               # the host keys, trusted on first use: paramiko's and rsync's ssh alike
    forget_host_keys(["203.0.113.10"])
"""

import json

from deploy.host.login import key_files
from deploy.paths import state_dir
from trainer.run_format import run_format


def remember_host(target):
    """Record how to reach `target` again: inventory name or user, address, port, key file path."""
    conn = target.conn
    _remember({"label": target.label, "user": conn.user, "address": conn.host, "port": conn.port, "key_files": key_files(conn),
               "inventory_host": target.host_name})


def remember_cluster(name):
    """Later tasks without -H act on the cluster `name` that deploy-full went to."""
    _remember({"label": name, "cluster": True})


def _remember(record):
    path = state_dir() / "state.json"
    run_format.write_json(path, {"host": record})


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


def remembered_as(address, user=None, port=None):
    """The remembered host's record if it is `address` (and `user`, `port` where given), else None: `fab -H` naming
    the host that deploy-full remembered logs in with its key, as `fab` without -H does."""
    record = remembered_host()
    if not record or record.get("address") != address or not record.get("user") or not record.get("port"):
        return None
    if (user is not None and user != record["user"]) or (port is not None and port != record["port"]):
        return None
    return record


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
