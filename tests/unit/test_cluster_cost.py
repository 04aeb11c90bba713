"""A cluster's monitor prices every host of it: the sum of their price_per_hour, so far and to the end."""

from types import SimpleNamespace

import yaml

from deploy.host.cluster import cluster_cost, cost_line
from deploy.inventory import load_inventory


def test_the_cluster_cost_sums_every_hosts_price_so_far_and_to_the_end():
    line = cluster_cost({"gpu1": 3.0, "gpu2": 1.5}, {"gpu1": 7200, "gpu2": 3600}, eta_seconds=1800)
    assert line == "cluster cost $4.5/h (gpu1 $3 + gpu2 $1.5): $7.50 so far, about $2.25 more to finish (ETA 0h30m)"
    assert "gpu2" in cluster_cost({"gpu1": 3.0, "gpu2": None}, {}, 1800) and "set price_per_hour" in cluster_cost({"gpu2": None}, {}, 0)


def test_a_host_without_a_price_is_named_and_the_known_hosts_cost_still_shown():
    """A host without a price is named as not counted; the cost of the others is still shown."""
    line = cluster_cost({"a": 2.0, "b": None, "c": None}, {"a": 3600, "b": 3600, "c": None}, eta_seconds=1800)
    assert line == ("cluster cost $2/h (a $2; b, c not counted: set price_per_hour in the inventory): $2.00 so far, "
                    "about $1.00 more to finish (ETA 0h30m)"), line


def test_the_monitor_line_takes_each_hosts_price_from_the_inventory_or_its_launch_and_the_chiefs_eta(tmp_path):
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump({"hosts": {"gpu1": {"address": "10.0.0.1", "price_per_hour": 2.0}, "gpu2": {"address": "10.0.0.2"}},
                                    "clusters": {"pair": {"hosts": ["gpu1", "gpu2"]}}}))
    inv = load_inventory(path)
    hosts = [SimpleNamespace(inv=inv.for_host(name), target=SimpleNamespace(label=name)) for name in ("gpu1", "gpu2")]
    running = {"state": "running", "uptime_seconds": 3600, "status": {"eta_seconds": 3600}}
    infos = [running, {**running, "agent": {"price_per_hour": 1.0}}]  # gpu2 was launched at $1/h: its agent says so
    assert cost_line(hosts, infos) == "cluster cost $3/h (gpu1 $2 + gpu2 $1): $3.00 so far, about $3.00 more to finish (ETA 1h00m)"
    finished = [{**info, "state": "finished"} for info in infos]
    assert cost_line(hosts, finished) == "cluster cost $3/h (gpu1 $2 + gpu2 $1): $3.00 so far"
