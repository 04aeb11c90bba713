"""inventory.yaml, loaded in one place: the file's keys over the defaults, checked, with the hosts `fab launch` made.

    inv = load_inventory()                 # $FACENET_INVENTORY, else <repo>/inventory.yaml
"""

import copy
import os
from pathlib import Path

import yaml

from deploy import launched
from deploy.errors import InventoryError
from deploy.inventory.checks import check_remote_paths, check_settings, merge
from deploy.inventory.hosts import make_cluster, make_host
from deploy.inventory.schema import DEFAULTS, Inventory
from deploy.paths import REPO_ROOT


def inventory_path():
    return Path(os.environ.get("FACENET_INVENTORY") or REPO_ROOT / "inventory.yaml")


def load_inventory(path=None):
    path = Path(path) if path else inventory_path()
    cfg, raw = read(path)
    hosts = {name: make_host(name, spec, path) for name, spec in (cfg["hosts"] or {}).items()}
    check_settings(cfg, raw, path)
    # the hosts and clusters `fab launch` created (the state folder's launched.json) are part of the inventory
    more_clusters = launched.merge(hosts, cfg["clusters"] or {}, cfg["price_per_hour"], path, make_host)
    if cfg["default_host"] is not None and cfg["default_host"] not in hosts:
        raise InventoryError(f"Inventory key 'default_host' in {path} names {cfg['default_host']!r}, "
                             f"which is not under 'hosts' (known: {sorted(hosts) or 'none'}).")
    clusters = {name: make_cluster(name, spec, hosts, path) for name, spec in (cfg["clusters"] or {}).items()}
    clusters.update({name: make_cluster(name, spec, hosts, launched.path()) for name, spec in more_clusters.items()})
    for host in hosts.values():
        if host.remote:
            check_remote_paths({**cfg["remote"], **host.remote}, path)
    return Inventory(path=path, **{k: v for k, v in cfg.items() if k not in ("hosts", "clusters")}, hosts=hosts, clusters=clusters)


def read(path):
    """(the file's keys merged over DEFAULTS, the file as read): an InventoryError for a file that is missing, not YAML,
    not a mapping, or with a key unknown or of the wrong type."""
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
    merge(cfg, raw, "", path)
    return cfg, raw
