"""inventory.yaml: the hosts and settings of the deploy tasks, in one place.

    inv = load_inventory()                 # $FACENET_INVENTORY, else <repo>/inventory.yaml
    inv.hosts["gpu"].address               # "203.0.113.10"
    inv.remote["runs_dir"]                 # "~/facenet-runs"
    inv.local_data                         # [Path("/home/me/data/crema-d")]

Defaults are in DEFAULTS below (docs/inventory.md documents each key). A file only needs what
differs. Unknown keys and values of the wrong type are an `InventoryError` naming the key.
Local paths are relative to the inventory file; remote paths starting with `~/` are
relative to the remote user's home.
"""

import configparser
import copy
import dataclasses
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from deploy.errors import InventoryError
from trainer.run_format import run_format

REPO_ROOT = Path(__file__).resolve().parent.parent



def host_requirements():
    """pip.gpu and pip.cpu defaults from setup.cfg, the one place that pins TensorFlow: the `train`
    extra (with TensorFlow's CUDA build) or `train-cpu`, plus what every install needs."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO_ROOT / "setup.cfg")
    lines = lambda text: [line.strip() for line in text.splitlines() if line.strip()]  # noqa: E731
    common = lines(cfg["options"]["install_requires"])
    extras = cfg["options.extras_require"]
    gpu = [re.sub(r"^tensorflow(?=[=<>~!])", "tensorflow[and-cuda]", r) for r in lines(extras["train"])]
    return {"gpu": gpu + common, "cpu": lines(extras["train-cpu"]) + common, "storage": lines(extras["storage"])}


DEFAULTS = {
    "default_host": None,
    "hosts": {},
    "clusters": {},
    "remote": {
        "project_dir": "~/facenet-deploy",
        "venv": "~/facenet-venv",
        "data_dir": "~/facenet-data",
        "runs_dir": "~/facenet-runs",
        "smoke_dir": None,  # null: beside runs_dir, see smoke_dir()
    },
    "local_data": [],
    "rsync_args": [],
    "train_config": "configs/full.yaml",
    "smoke_config": "configs/smoke.yaml",
    "tmux_session": run_format.SESSION,
    "allow_cpu_training": False,
    "ssh": {"connect_timeout": 15, "keepalive_interval": 15, "keepalive_count_max": 3, "rsync_timeout": 120,
            "config_file": None},
    "tensorboard": {"session": "facenet-tensorboard", "remote_port": 6006, "local_port": 6006},
    "apt_packages": ["tmux", "rsync", "python3-venv"],
    "python": "python3",
    "pip": {**host_requirements(), "extra_args": []},
    "price_per_hour": None,
    # done_minutes: once the run's end is stored or fetched, autostop waits only this long (deploy/host/agent.py)
    "autostop": {"idle_minutes": None, "command": "sudo -n /sbin/poweroff", "wait_for": list(run_format.WAIT_FOR), "shutdown_terminates": False,
                 "done_minutes": 10},
    "stall_minutes": None,  # null: max(15, 3 x the slowest epoch so far)
    "ec2": {"metadata_url": run_format.EC2_METADATA_URL, "poll_seconds": run_format.POLL_SECONDS,
            "spot_grace_seconds": run_format.SPOT_GRACE_SECONDS},
    "storage": {"url": None, "endpoint_url": None, "region": None, "credentials": "host"},  # off by default: deploy/runs/storage.py
    "launch": {  # `fab launch` (deploy/aws/): docs/ec2.md explains each
        "region": None, "profile": None, "type": "g5.xlarge", "alternatives": [], "spot": False, "fallback_on_demand": False,
        "spot_interruption": "terminate", "disk_gb": 150, "ami": None,
        "ami_parameter": "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id",
        "user": "ubuntu", "key_name": None, "public_key_file": None, "key_file": None, "ssh_cidr": None, "ssh_cidr_wide": False,
        "instance_profile": None,
        # a launched host stops billing on its own: autostop armed at launch, and the budget cap (null: off)
        "autostop_minutes": 30, "max_hours": 24, "ssh_wait_seconds": 600, "worker_port": 23456,
    },
    "notify": {"webhook": None},  # deploy/recovery/notify.py and the host agent: Slack- and Discord-compatible incoming webhook
    "recovery": {"hosts": [], "unreachable_minutes": 5, "max_restarts": 3, "poll_seconds": 30,  # `fab watch` (deploy/recovery/)
                 "give_up_minutes": 30, "max_restarts_on_kill": 1, "down_when_done": False,
                 "launch": {"type": None, "spot": False}},
}
HOST_KEYS = {"address": str, "user": str, "port": int, "key_file": str, "price_per_hour": (int, float),
             "worker_address": str, "worker_port": int, "remote": dict}
# > 0; null where the default is, or where null turns the setting off (OFF)
NUMBERS = {"price_per_hour", "autostop.idle_minutes", "autostop.done_minutes", "launch.autostop_minutes", "ec2.poll_seconds",
           "ec2.spot_grace_seconds", "launch.max_hours", "stall_minutes", "recovery.unreachable_minutes",
           "recovery.poll_seconds", "recovery.give_up_minutes"}
OFF = {"autostop.done_minutes", "launch.autostop_minutes", "launch.max_hours"}
WAIT_FOR = run_format.WAIT_FOR  # autostop.wait_for: what keeps the host up besides a training and a fab task
SESSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")  # tmux turns '.' and ':' into '_'



@dataclass(frozen=True)
class Host:
    name: str
    address: str
    user: str | None = None
    port: int = 22
    key_file: str | None = None
    price_per_hour: float | None = None
    worker_address: str | None = None  # where the other workers of a cluster reach it (a private address)
    worker_port: int | None = None  # TensorFlow's worker port on it (default: the cluster's port)
    remote: dict | None = None  # this host's own remote.* paths


@dataclass(frozen=True)
class Cluster:
    """Hosts that train as one (MultiWorkerMirroredStrategy); the first is worker 0, the chief."""

    name: str
    hosts: tuple
    port: int


@dataclass
class Inventory:
    path: Path
    default_host: str | None
    hosts: dict
    clusters: dict
    remote: dict
    local_data: list
    rsync_args: list
    train_config: str
    smoke_config: str
    tmux_session: str
    allow_cpu_training: bool
    ssh: dict
    tensorboard: dict
    apt_packages: list
    python: str
    pip: dict
    price_per_hour: float | None
    autostop: dict
    ec2: dict
    stall_minutes: float | None = None  # a training whose status.json is older than this while it lives is stalled
    launch: dict = dataclasses.field(default_factory=lambda: copy.deepcopy(DEFAULTS["launch"]))
    storage: dict = dataclasses.field(default_factory=lambda: copy.deepcopy(DEFAULTS["storage"]))
    notify: dict = dataclasses.field(default_factory=lambda: copy.deepcopy(DEFAULTS["notify"]))
    recovery: dict = dataclasses.field(default_factory=lambda: copy.deepcopy(DEFAULTS["recovery"]))

    def find_host(self, name_or_address, port=None):
        """The inventory host whose name or address is `name_or_address`, else None. Several hosts may
        share an address (one machine, several sshd ports): `port` picks one; without it, the one at
        port 22, else the first."""
        if name_or_address in self.hosts:
            return self.hosts[name_or_address]
        at = [h for h in self.hosts.values() if h.address == name_or_address]
        if port is not None:
            return next((h for h in at if h.port == port), None)
        return next((h for h in at if h.port == 22), at[0] if at else None)

    def for_host(self, name):
        """The inventory as host `name` sees it: its own remote.* paths where it sets them."""
        host = self.hosts.get(name)
        if host is None or not host.remote:
            return self
        return dataclasses.replace(self, remote={**self.remote, **host.remote})

    def price_of(self, label):
        """USD per hour of the host `label`: its hosts entry's price_per_hour, else the top-level one (None: unknown)."""
        host = self.hosts.get(label)
        return host.price_per_hour if host and host.price_per_hour is not None else self.price_per_hour


def inventory_path():
    return Path(os.environ.get("FACENET_INVENTORY") or REPO_ROOT / "inventory.yaml")


def load_inventory(path=None):
    path = Path(path) if path else inventory_path()
    if not path.is_file():
        raise InventoryError(f"Inventory {path} does not exist. Create it (see docs/inventory.md), "
                             "or point FACENET_INVENTORY at one.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise InventoryError(f"Inventory {path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise InventoryError(f"Inventory {path} must hold a mapping. Received: {type(raw).__name__}")
    cfg = copy.deepcopy(DEFAULTS)
    _merge(cfg, raw, "", path)
    base = path.resolve().parent
    hosts = {name: _host(name, spec, path) for name, spec in (cfg["hosts"] or {}).items()}
    from deploy import launched  # the hosts and clusters `fab launch` created (state dir): part of the inventory

    launched.check_settings(cfg["launch"], path)
    more_clusters = launched.merge(hosts, cfg["clusters"] or {}, cfg["price_per_hour"], path, _host)
    if cfg["default_host"] is not None and cfg["default_host"] not in hosts:
        raise InventoryError(f"Inventory key 'default_host' in {path} names {cfg['default_host']!r}, "
                             f"which is not under 'hosts' (known: {sorted(hosts) or 'none'}).")
    clusters = {name: _cluster(name, spec, hosts, path) for name, spec in (cfg["clusters"] or {}).items()}
    clusters.update({name: _cluster(name, spec, hosts, launched.path()) for name, spec in more_clusters.items()})
    local_data = [_local(base, p) for p in cfg["local_data"]]
    names = [p.name for p in local_data]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InventoryError(f"Inventory key 'local_data' in {path}: each directory is uploaded to remote.data_dir/<its name>, "
                             f"so names must differ. Received two named {dupes[0]!r}.")
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
    unknown = [w for w in cfg["autostop"]["wait_for"] if w not in WAIT_FOR]
    if unknown:
        raise InventoryError(f"Inventory key 'autostop.wait_for' in {path} lists what keeps the host up besides a training and a "
                             f"fab task: any of {', '.join(WAIT_FOR)} (or []). Received: {unknown[0]!r}")
    # the agent gives EC2's default address up on a "not EC2" answer, a URL the inventory names never
    cfg["ec2"]["metadata_url_explicit"] = "metadata_url" in (raw.get("ec2") or {})
    if cfg["ssh"]["config_file"]:
        cfg["ssh"]["config_file"] = str(_local(base, cfg["ssh"]["config_file"]))
        if not Path(cfg["ssh"]["config_file"]).is_file():
            raise InventoryError(f"Inventory key 'ssh.config_file' in {path} names {cfg['ssh']['config_file']}, which is not a file "
                                 "(an OpenSSH client config, as for `ssh -F`).")
    check_remote_paths(cfg["remote"], path)
    check_storage(cfg["storage"], path)
    from deploy.recovery.settings import check_settings  # notify: and recovery: beyond their types

    check_settings(cfg, path)
    for host in hosts.values():
        if host.remote:
            check_remote_paths({**cfg["remote"], **host.remote}, path)
    return Inventory(
        path=path, default_host=cfg["default_host"], hosts=hosts, clusters=clusters, remote=cfg["remote"], local_data=local_data,
        rsync_args=cfg["rsync_args"],
        train_config=cfg["train_config"], smoke_config=cfg["smoke_config"], tmux_session=cfg["tmux_session"],
        allow_cpu_training=cfg["allow_cpu_training"], ssh=cfg["ssh"],
        tensorboard=cfg["tensorboard"], apt_packages=cfg["apt_packages"], python=cfg["python"], pip=cfg["pip"],
        price_per_hour=cfg["price_per_hour"], autostop=cfg["autostop"], ec2=cfg["ec2"], launch=cfg["launch"],
        stall_minutes=cfg["stall_minutes"], storage=cfg["storage"], notify=cfg["notify"], recovery=cfg["recovery"],
    )


def _merge(base, new, prefix, path):
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
            _merge(default, value, f"{dotted}.", path)
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


def smoke_dir(remote):
    """Where `fab smoke-test` writes its runs: remote.smoke_dir, or beside runs_dir (~/facenet-runs-smoke).
    Never inside runs_dir: TensorBoard reads that folder whole and would list the smoke runs beside the real ones."""
    return remote["smoke_dir"] or remote["runs_dir"].rstrip("/") + "-smoke"


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


STORAGE_CREDENTIALS = ("host", "laptop")
REGION = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")  # botocore's check of region_name


def check_storage(storage, path):
    """storage.url is s3://bucket[/prefix] (or null: off); the other storage keys only with it."""
    from trainer.storage.layout import StorageUrlError, parse_url

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


def _host(name, spec, path):
    if not isinstance(spec, dict):
        raise InventoryError(f"Inventory key 'hosts.{name}' in {path} expects a mapping (address, user, port, key_file). Received: {spec!r}")
    for key, value in spec.items():
        if key not in HOST_KEYS:
            raise InventoryError(f"Unknown inventory key 'hosts.{name}.{key}' in {path}. Known keys here: {', '.join(HOST_KEYS)}")
        expected = HOST_KEYS[key]
        if not isinstance(value, expected) or isinstance(value, bool) or value == "" or (key == "price_per_hour" and value <= 0):
            what = "a number above 0 (USD per hour)" if key == "price_per_hour" else expected.__name__
            raise InventoryError(f"Inventory key 'hosts.{name}.{key}' in {path} expects {what}. Received: {value!r}")
    if "address" not in spec:
        raise InventoryError(f"Inventory key 'hosts.{name}.address' in {path} is missing: give the host's IP or DNS name.")
    for key in ("port", "worker_port"):
        if key in spec and not 0 < spec[key] < 65536:
            raise InventoryError(f"Inventory key 'hosts.{name}.{key}' in {path} expects a port 1-65535. Received: {spec[key]}")
    unknown = sorted(set(spec.get("remote") or {}) - set(DEFAULTS["remote"]))
    if unknown or not all(isinstance(v, str) and v for v in (spec.get("remote") or {}).values()):
        raise InventoryError(f"Inventory key 'hosts.{name}.remote' in {path} overrides remote paths for this host: "
                             f"{', '.join(DEFAULTS['remote'])}, each a non-empty string. Received: {spec['remote']!r}")
    port = spec.get("port", 22)
    key_file = spec.get("key_file")
    if key_file:
        key_file = str(_local(path.resolve().parent, key_file))
    return Host(name=name, address=spec["address"], user=spec.get("user"), port=port, key_file=key_file,
                price_per_hour=spec.get("price_per_hour"), worker_address=spec.get("worker_address"),
                worker_port=spec.get("worker_port"), remote=spec.get("remote"))


def _cluster(name, spec, hosts, path):
    where = f"Inventory key 'clusters.{name}' in {path}"
    if not isinstance(spec, dict) or set(spec) - {"hosts", "port"}:
        raise InventoryError(f"{where} expects a mapping with hosts (names under hosts:, the chief first) and port. Received: {spec!r}")
    members = spec.get("hosts")
    if not isinstance(members, list) or len(members) < 2 or len(set(map(str, members))) != len(members):
        raise InventoryError(f"{where}.hosts expects a list of two or more different host names. Received: {members!r}")
    missing = [m for m in members if m not in hosts]
    if missing:
        raise InventoryError(f"{where}.hosts names {', '.join(map(str, missing))}, not under hosts: (known: {sorted(hosts) or 'none'}).")
    if name in hosts:
        raise InventoryError(f"{where}: a host has the same name; -H {name} must name one or the other.")
    port = spec.get("port", 23456)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise InventoryError(f"{where}.port expects a port 1-65535 (TensorFlow's worker port). Received: {port!r}")
    return Cluster(name=name, hosts=tuple(members), port=port)


def _local(base, p):
    p = Path(os.path.expanduser(p))
    return p if p.is_absolute() else base / p
