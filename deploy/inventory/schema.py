"""inventory.yaml's keys, their defaults and types, and what a loaded inventory is (docs/inventory.md documents each key).
Data only: deploy.inventory.checks checks a file against it, deploy.inventory.load makes an Inventory of it.
"""

import configparser
import copy
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from deploy.paths import REPO_ROOT
from trainer.run_format import run_format


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
    "notify": {"webhook": None},  # deploy/recovery/notify.py: Slack- and Discord-compatible incoming webhook
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
STORAGE_CREDENTIALS = ("host", "laptop")
INTERRUPTIONS = ("terminate", "stop")  # launch.spot_interruption: what EC2 does to a reclaimed spot instance


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


def smoke_dir(remote):
    """Where `fab smoke-test` writes its runs: remote.smoke_dir, or beside runs_dir (~/facenet-runs-smoke).
    Never inside runs_dir: TensorBoard reads that folder whole and would list the smoke runs beside the real ones."""
    return remote["smoke_dir"] or remote["runs_dir"].rstrip("/") + "-smoke"
