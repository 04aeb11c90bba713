"""The hosts: and clusters: entries of inventory.yaml (and of launched.json), checked, as Host and Cluster.

    make_host("gpu", {"address": "203.0.113.10", "user": "ubuntu"}, path)
    make_cluster("pair", {"hosts": ["gpu1", "gpu2"]}, hosts, path)
"""

import os
from pathlib import Path

from deploy.errors import InventoryError
from deploy.inventory.schema import DEFAULTS, HOST_KEYS, Cluster, Host


def make_host(name, spec, path):
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
        key_file = str(local_path(path.resolve().parent, key_file))
    return Host(name=name, address=spec["address"], user=spec.get("user"), port=port, key_file=key_file,
                price_per_hour=spec.get("price_per_hour"), worker_address=spec.get("worker_address"),
                worker_port=spec.get("worker_port"), remote=spec.get("remote"))


def make_cluster(name, spec, hosts, path):
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


def local_path(base, p):
    p = Path(os.path.expanduser(p))
    return p if p.is_absolute() else base / p
