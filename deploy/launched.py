"""The hosts `fab launch` created, kept in the state dir's launched.json and merged into the inventory.

    launched.add(name, entry)                # right after run_instances: an instance is never untracked
    launched.update(name, address=...)       # once it runs: its address, price
    launched.entry("gpu1")                   # {"instance_id": ..., "region": ..., "max_hours": ..., ...} or None
    launched.remove("gpu1")                  # after `fab down`
    load_inventory()                         # inv.hosts["gpu1"], usable with -H gpu1 by every task

A launched host is an inventory host like one of inventory.yaml (address, user, key_file,
price_per_hour, worker_address); a name in both is an error naming both files. The file lives in
$FACENET_STATE_DIR (default .facenet/), next to the remembered host. No boto3 here: a laptop
without the `aws` extra still reads it.
"""

import contextlib
import fcntl
import json

from deploy.errors import InventoryError
from deploy.paths import state_dir
from trainer.run_format import run_format

HOST_FIELDS = ("address", "user", "key_file", "price_per_hour", "worker_address")  # what the inventory sees of an entry


def path():
    return state_dir(create=False) / "launched.json"


def load():
    """{"hosts": {name: entry}, "clusters": {name: {"hosts": [...], "port": N, ...}}}; empty when nothing was launched."""
    try:
        data = json.loads(path().read_text())
    except FileNotFoundError:
        return {"hosts": {}, "clusters": {}}
    except ValueError as e:
        raise InventoryError(f"{path()} (the hosts `fab launch` created) is not valid JSON: {e}. Fix or remove it; "
                             "`fab instances` lists what runs in your account.") from None
    return {"hosts": data.get("hosts") or {}, "clusters": data.get("clusters") or {}}


@contextlib.contextmanager
def _changing():
    """load() under an exclusive lock, written back atomically at the end (two launches at once both land)."""
    p = path()
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = load()
        yield data
        run_format.write_json(p, data, sort_keys=True)


def entry(name):
    return load()["hosts"].get(name)


def members(name):
    """The launched hosts that `name` names: [name], a launched cluster's hosts, or [] if it was not launched."""
    data = load()
    if name in data["clusters"]:
        return list(data["clusters"][name]["hosts"])
    return [name] if name in data["hosts"] else []


def add(name, record):
    with _changing() as data:
        data["hosts"][name] = record


def update(name, **fields):
    with _changing() as data:
        data["hosts"].setdefault(name, {}).update(fields)


def add_cluster(name, hosts, port, placement_group):
    with _changing() as data:
        data["clusters"][name] = {"hosts": list(hosts), "port": port, "placement_group": placement_group}


def remove(name):
    """Forget host `name`, and the cluster `name` (with its hosts) if it is one; returns the names forgotten."""
    with _changing() as data:
        cluster = data["clusters"].pop(name, None)
        names = list(cluster["hosts"]) if cluster else [name]
        for n in names:
            data["hosts"].pop(n, None)
        for cname, spec in list(data["clusters"].items()):  # a cluster that lost a member is no cluster any more
            if set(spec["hosts"]) & set(names):
                data["clusters"].pop(cname)
    return names


def merge(hosts, inventory_clusters, top_price, inventory, make_host):
    """Add the launched hosts to `hosts` (inventory.yaml's, by name); returns the launched clusters' specs.
    The inventory's top-level price_per_hour, when set, overrides the price recorded at launch."""
    data = load()
    for name, record in data["hosts"].items():
        if name in hosts:
            raise InventoryError(f"Host {name!r} is both in {inventory} (hosts:) and launched by `fab launch` ({path()}). "
                                 f"Rename one: the inventory entry, or `fab down {name}` and launch it under another name.")
        if "address" not in record:  # launched, not running yet (or the launch was interrupted): only `fab down` sees it
            continue
        spec = {k: record[k] for k in HOST_FIELDS if record.get(k) is not None}
        if top_price is not None:
            spec["price_per_hour"] = top_price
        hosts[name] = make_host(name, spec, path())
    for name in data["clusters"]:
        if name in inventory_clusters:
            raise InventoryError(f"Cluster {name!r} is both in {inventory} (clusters:) and launched by `fab launch` ({path()}). "
                                 "Rename the inventory's.")
    return {name: {"hosts": spec["hosts"], "port": spec["port"]} for name, spec in data["clusters"].items()
            if all(h in hosts for h in spec["hosts"])}
