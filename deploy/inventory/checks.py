"""inventory.yaml checked: each check raises an InventoryError naming the key, what it expects, and what it received.

    merge(cfg, raw, "", path)                # raw over the defaults, each value checked against its default's type
    check_settings(cfg, raw, path)           # the keys beyond their types: ports, names, paths, storage, launch, notify
"""

import ipaddress
import posixpath
import re
from pathlib import Path
from urllib.parse import urlsplit

from deploy.errors import InventoryError
from deploy.inventory.hosts import local_path
from deploy.inventory.schema import (
    INTERRUPTIONS,
    NUMBERS,
    OFF,
    SESSION_NAME,
    STORAGE_CREDENTIALS,
    WAIT_FOR,
    smoke_dir,
)
from trainer.storage.layout import StorageUrlError, parse_url


def check_settings(cfg, raw, path):
    """The merged `cfg` of the file `path` (`raw`, as read) beyond its types; resolves its local paths in place."""
    base = path.resolve().parent
    cfg["local_data"] = check_local_data(cfg["local_data"], base, path)
    check_ports_and_sessions(cfg, path)
    check_wait_for(cfg["autostop"]["wait_for"], path)
    # the agent gives EC2's default address up on a "not EC2" answer, a URL the inventory names never
    cfg["ec2"]["metadata_url_explicit"] = "metadata_url" in (raw.get("ec2") or {})
    if cfg["ssh"]["config_file"]:
        cfg["ssh"]["config_file"] = check_ssh_config_file(cfg["ssh"]["config_file"], base, path)
    check_remote_paths(cfg["remote"], path)
    check_storage(cfg["storage"], path)
    check_launch(cfg["launch"], path)
    check_notify_and_recovery(cfg, path)


def check_local_data(folders, base, path):
    """The local_data folders as paths; each goes to remote.data_dir/<its name>, so the names must differ."""
    local_data = [local_path(base, p) for p in folders]
    names = [p.name for p in local_data]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InventoryError(f"Inventory key 'local_data' in {path}: each directory is uploaded to remote.data_dir/<its name>, "
                             f"so names must differ. Received two named {dupes[0]!r}.")
    return local_data


def check_ports_and_sessions(cfg, path):
    """TensorBoard's ports, the ssh: numbers, the tmux session names."""
    for key in ("local_port", "remote_port"):
        if not 0 < cfg["tensorboard"][key] < 65536:
            raise InventoryError(f"Inventory key 'tensorboard.{key}' in {path} expects a port 1-65535. Received: {cfg['tensorboard'][key]}")
    for key, value in cfg["ssh"].items():
        if key != "config_file" and value <= 0:
            raise InventoryError(f"Inventory key 'ssh.{key}' in {path} expects a positive number of seconds (or count). Received: {value}")
    for key, value in (("tmux_session", cfg["tmux_session"]), ("tensorboard.session", cfg["tensorboard"]["session"])):
        if not SESSION_NAME.fullmatch(value):
            raise InventoryError(f"Inventory key {key!r} in {path} expects a tmux session name of letters, digits, '_' or '-' "
                                 f"(tmux renames '.' and ':'). Received: {value!r}")


def check_wait_for(wait_for, path):
    unknown = [w for w in wait_for if w not in WAIT_FOR]
    if unknown:
        raise InventoryError(f"Inventory key 'autostop.wait_for' in {path} lists what keeps the host up besides a training and a "
                             f"fab task: any of {', '.join(WAIT_FOR)} (or []). Received: {unknown[0]!r}")


def check_ssh_config_file(config_file, base, path):
    """ssh.config_file as an absolute path, to a file that exists."""
    config_file = str(local_path(base, config_file))
    if not Path(config_file).is_file():
        raise InventoryError(f"Inventory key 'ssh.config_file' in {path} names {config_file}, which is not a file "
                             "(an OpenSSH client config, as for `ssh -F`).")
    return config_file


def merge(base, new, prefix, path):
    for key, value in new.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            raise InventoryError(f"Unknown inventory key {dotted!r} in {path}. Known keys here: {', '.join(sorted(base))}")
        default = base[key]
        if dotted in NUMBERS:
            nullable = default is None or dotted in OFF
            value = None if dotted in OFF and value == 0 and not isinstance(value, bool) else value  # 0: off, as on the command line
            if not (value is None and nullable) and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise InventoryError(f"Inventory key {dotted!r} in {path} expects a number above 0"
                                     f"{' or null' if default is None else ' (null or 0: off)' if dotted in OFF else ''}. Received: {value!r}")
            base[key] = value
        elif dotted in ("hosts", "clusters"):
            value = {} if value is None else value  # only commented-out entries
            if not isinstance(value, dict):
                raise InventoryError(f"Inventory key {dotted!r} in {path} expects a mapping of {dotted[:-1]} name to settings. Received: {value!r}")
            base[key] = value
        elif dotted == "ec2.metadata_url":  # null, or off (YAML reads a bare `off` as false): no metadata requests at all
            if value is None or value is False or value == "off":
                base[key] = None
            elif isinstance(value, str) and value.startswith(("http://", "https://")):
                base[key] = value
            else:
                raise InventoryError(f"Inventory key 'ec2.metadata_url' in {path} expects an http:// URL (EC2's is "
                                     f"http://169.254.169.254), or null / off for no metadata requests. Received: {value!r}")
        elif isinstance(default, dict):
            if not isinstance(value, dict):
                raise InventoryError(f"Inventory key {dotted!r} in {path} expects a mapping. Received: {value!r}")
            merge(default, value, f"{dotted}.", path)
        elif isinstance(default, list):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InventoryError(f"Inventory key {dotted!r} in {path} expects a list of strings. Received: {value!r}")
            base[key] = value
        elif default is None or isinstance(default, str):
            if not (isinstance(value, str) and value) and not (default is None and value is None):
                raise InventoryError(f"Inventory key {dotted!r} in {path} expects a non-empty string. Received: {value!r}")
            base[key] = value
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise InventoryError(f"Inventory key {dotted!r} in {path} expects true or false. Received: {value!r}")
            base[key] = value
        elif isinstance(default, int):
            if not isinstance(value, int) or isinstance(value, bool):
                raise InventoryError(f"Inventory key {dotted!r} in {path} expects an integer. Received: {value!r}")
            base[key] = value


def _remote_norm(p):
    """A remote path in one spelling: `~`, `~/` and relative paths are under $HOME."""
    if p == "~" or p.startswith("~/"):
        p = "$HOME" + p[1:]
    elif not p.startswith("/"):
        p = "$HOME/" + p
    return posixpath.normpath(p)


def _inside(a, b):
    """Remote path `a` is `b` or sits inside it (both as _remote_norm spells them)."""
    return a == b or a.startswith(b.rstrip("/") + "/")


def check_remote_paths(remote, path):
    """sync-code mirrors into remote.project_dir: it must be a folder of its own, never the home
    directory, `/`, or one that holds (or sits inside) the venv, the data, the runs or the smoke runs.
    The smoke runs stay out of runs_dir, TensorBoard's logdir."""
    project = _remote_norm(remote["project_dir"])
    if project in ("$HOME", "/"):
        raise InventoryError(f"Inventory key 'remote.project_dir' in {path} is {remote['project_dir']!r}: the code needs a folder "
                             "of its own (e.g. ~/facenet-deploy), not the home directory or /.")
    folders = {"venv": remote["venv"], "data_dir": remote["data_dir"], "runs_dir": remote["runs_dir"], "smoke_dir": smoke_dir(remote)}
    for key, folder in folders.items():
        other = _remote_norm(folder)
        if _inside(project, other) or _inside(other, project):
            raise InventoryError(f"Inventory key 'remote.project_dir' in {path} is {remote['project_dir']!r}, which is, holds or "
                                 f"sits inside remote.{key} ({folder!r}). The code gets a folder of its own so that no "
                                 "code sync can touch the venv, data or runs: pick another.")
    if _inside(_remote_norm(folders["smoke_dir"]), _remote_norm(remote["runs_dir"])):
        raise InventoryError(f"Inventory key 'remote.smoke_dir' in {path} is {remote['smoke_dir']!r}, which is or sits inside "
                             f"remote.runs_dir ({remote['runs_dir']!r}): TensorBoard reads runs_dir whole and would list the smoke "
                             "runs beside the real ones. Pick a folder outside it, or null (beside runs_dir: "
                             f"{remote['runs_dir'].rstrip('/')}-smoke).")


REGION = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")  # botocore's check of region_name


def check_storage(storage, path):
    """storage.url is s3://bucket[/prefix] (or null: off); the other storage keys only with it."""
    if storage["url"] is None:
        given = [k for k in ("endpoint_url", "region") if storage[k] is not None] + (["credentials"] if storage["credentials"] != "host" else [])
        if given:
            raise InventoryError(f"Inventory key 'storage.{given[0]}' in {path} is set but 'storage.url' is not: storage is off "
                                 "without a URL. Set storage.url (e.g. s3://my-bucket/facenet-runs), or remove the other storage keys.")
        return
    try:
        parse_url(storage["url"])
    except StorageUrlError as e:
        raise InventoryError(f"Inventory key 'storage.url' in {path}: {e}") from None
    endpoint = storage["endpoint_url"]
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise InventoryError(f"Inventory key 'storage.endpoint_url' in {path} expects an http:// or https:// URL of an S3-compatible "
                             f"endpoint (e.g. https://<account>.r2.cloudflarestorage.com). Received: {endpoint!r}")
    region = storage["region"]
    if region is not None and not (isinstance(region, str) and REGION.fullmatch(region)):
        raise InventoryError(f"Inventory key 'storage.region' in {path} expects a region name of letters, digits and '-' "
                             f"(e.g. eu-west-1; `auto` for Cloudflare R2), or no key: boto3's own. Received: {region!r}")
    if storage["credentials"] not in STORAGE_CREDENTIALS:
        raise InventoryError(f"Inventory key 'storage.credentials' in {path} expects host (the host's own AWS credentials: an "
                             "instance role, its ~/.aws) or laptop (send this machine's credentials to the host). "
                             f"Received: {storage['credentials']!r}")


def check_launch(launch, inventory):
    """The `launch:` keys beyond their types (merge checked those)."""
    where = lambda key: f"Inventory key 'launch.{key}' in {inventory}"  # noqa: E731
    for key in ("disk_gb", "ssh_wait_seconds"):
        if launch[key] <= 0:
            raise InventoryError(f"{where(key)} expects a number above 0. Received: {launch[key]}")
    if not 0 < launch["worker_port"] < 65536:
        raise InventoryError(f"{where('worker_port')} expects a port 1-65535. Received: {launch['worker_port']}")
    if launch["spot_interruption"] not in INTERRUPTIONS:
        raise InventoryError(f"{where('spot_interruption')} expects one of {', '.join(INTERRUPTIONS)} (what EC2 does to a "
                             f"reclaimed spot instance). Received: {launch['spot_interruption']!r}")
    if launch["ssh_cidr"] is not None:
        check_cidr(launch["ssh_cidr"], where("ssh_cidr"), wide=launch["ssh_cidr_wide"])


WIDEST = {4: 8, 6: 32}  # the shortest prefix launch.ssh_cidr may have without launch.ssh_cidr_wide: true (a /8, an ISP's /32)


def check_cidr(cidr, where, wide=False):
    """`cidr` as an ip_network; an error for a malformed one, one that opens SSH to everybody (/0, always), or one
    wider than WIDEST (e.g. 0.0.0.0/1, half the internet) unless `wide` (inventory launch.ssh_cidr_wide: true)."""
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise InventoryError(f"{where} expects an address block such as 203.0.113.7/32 (your address). Received: {cidr!r}") from None
    if net.prefixlen == 0:
        raise InventoryError(f"{where} is {cidr}: that opens SSH to the whole internet. Give your own address as /32 "
                             "(or your office's block); leave it unset to use this machine's public address.")
    if net.prefixlen < WIDEST[net.version] and not wide:
        raise InventoryError(f"{where} is {cidr}: {net.num_addresses:.3g} addresses may reach SSH, more than a /{WIDEST[net.version]}. "
                             "Give your own address as /32 (or your office's block); if you mean it, set launch.ssh_cidr_wide: true.")
    return str(net)


def check_notify_and_recovery(cfg, path):
    """notify: and recovery: beyond their types."""
    url = cfg["notify"]["webhook"]
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InventoryError(f"Inventory key 'notify.webhook' in {path} expects an http(s) URL (a Slack or Discord incoming "
                                 f"webhook). Received: {url!r}")
    recovery = cfg["recovery"]
    if recovery["max_restarts"] < 0:
        raise InventoryError(f"Inventory key 'recovery.max_restarts' in {path} expects how many times `fab watch` may move a run, "
                             f"0 or more. Received: {recovery['max_restarts']}")
    if recovery["max_restarts_on_kill"] < 0:
        raise InventoryError(f"Inventory key 'recovery.max_restarts_on_kill' in {path} expects how many times `fab watch` may restart "
                             f"a trainer ended by SIGKILL, 0 or more. Received: {recovery['max_restarts_on_kill']}")
    dupes = sorted({h for h in recovery["hosts"] if recovery["hosts"].count(h) > 1})
    if dupes:
        raise InventoryError(f"Inventory key 'recovery.hosts' in {path} names {dupes[0]!r} twice: list each host once, in the order to try.")
