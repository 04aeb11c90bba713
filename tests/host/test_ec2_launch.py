"""Launching EC2 hosts through the Python API (deploy.aws), against moto's server on 127.0.0.1.

Real parts: boto3 over HTTP to moto's standalone server (EC2, SSM, key pairs, security groups,
spot prices), and for the SSH wait a real sshd on 127.0.0.1 that the launched instance's (fake)
address reaches through an OpenSSH config file (inventory ssh.config_file). What moto cannot do,
refuse capacity or quota, is injected with a botocore event hook on the caller's boto3 session;
the launch code itself is unchanged.
"""

import json
import os
from pathlib import Path

import pytest
import yaml

from tests.support.aws import CIDR, ec2, load, quiet

pytestmark = [pytest.mark.ssh]


def refusing(session, codes):
    """Make the session's RunInstances fail with each of `codes` in turn (then succeed); returns the calls seen."""
    from botocore.exceptions import ClientError

    calls = []

    def hook(params, **_):
        calls.append({"type": params["InstanceType"], "zone": params["Placement"]["AvailabilityZone"],
                      "market": (params.get("InstanceMarketOptions") or {}).get("MarketType", "on-demand"), "params": params})
        code = codes.pop(0) if codes else None
        if code:
            raise ClientError({"Error": {"Code": code, "Message": f"injected {code}"}}, "RunInstances")

    session.events.register("before-parameter-build.ec2.RunInstances", hook)  # the API parameters, before sending
    return calls


def session():
    import boto3

    return boto3.session.Session()


def test_a_launched_host_is_an_inventory_host_reached_over_ssh_with_imdsv2_and_ssh_from_one_address(cloud_inv, ssh_host):
    from fabric import Config

    from deploy.aws.launch import launch_host

    before = ssh_host.log_text().count("Accepted publickey")
    lines = []
    # no autostop, no cap: nothing is armed on the local sshd's user (tests/journeys/test_ec2_end_to_end.py arms both)
    host = launch_host(load(), "gpu1", Config(), quiet(lines), instance_type="g5.xlarge", disk_gb=200, idle_minutes=0, max_hours=0)

    [instance] = [i for r in ec2().describe_instances()["Reservations"] for i in r["Instances"]]
    assert host.name == "gpu1" and host.address == instance["PublicIpAddress"] and host.user == ssh_host.user
    assert host.worker_address == instance["PrivateIpAddress"] and host.key_file == str(ssh_host.key_file)
    assert host.price_per_hour == 1.006  # the catalog's g5.xlarge in us-east-1
    assert instance["MetadataOptions"]["HttpTokens"] == "required"  # IMDSv2 only
    assert instance["InstanceType"] == "g5.xlarge" and instance["KeyName"].startswith("facenet-deploy-")
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags["facenet-deploy"] == "gpu1" and tags["facenet-deploy:user"].startswith(os.environ.get("USER", "") or "")
    [volume] = ec2().describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [instance["InstanceId"]]}])["Volumes"]
    assert volume["Size"] == 200

    [group] = ec2().describe_security_groups(GroupIds=[g["GroupId"] for g in instance["SecurityGroups"]])["SecurityGroups"]
    assert group["GroupName"] == "facenet-deploy"
    rules = {(p["FromPort"], p["ToPort"]): p for p in group["IpPermissions"]}
    assert set(rules) == {(22, 22), (23456, 23456)}
    assert [r["CidrIp"] for r in rules[(22, 22)]["IpRanges"]] == [CIDR] and not rules[(22, 22)].get("UserIdGroupPairs")
    assert [g["GroupId"] for g in rules[(23456, 23456)]["UserIdGroupPairs"]] == [group["GroupId"]]
    assert not rules[(23456, 23456)]["IpRanges"] and not rules[(23456, 23456)].get("Ipv6Ranges")
    everywhere = [r for p in group["IpPermissions"] for r in p.get("IpRanges", []) + p.get("Ipv6Ranges", [])
                  if r.get("CidrIp") == "0.0.0.0/0" or r.get("CidrIpv6") == "::/0"]
    assert everywhere == []

    inv = load()  # what every task sees: the host by name, with its price
    assert inv.hosts["gpu1"] == host and inv.price_of("gpu1") == 1.006
    record = json.loads((Path(os.environ["FACENET_STATE_DIR"]) / "launched.json").read_text())["hosts"]["gpu1"]
    assert record["instance_id"] == instance["InstanceId"] and record["region"] == "us-east-1" and record["market"] == "on-demand"
    assert ssh_host.log_text().count("Accepted publickey") > before  # the wait for SSH reached the sshd through the alias
    text = "\n".join(lines)
    assert f"SSH only from {CIDR} (launch.ssh_cidr)" in text and "$1.006/h (on-demand list price in us-east-1" in text, text
    assert "stops billing on its own: NO autostop; NO budget cap. Change with --idle-minutes / --max-hours (0: off)" in text, text
    assert record["max_hours"] is None and record["autostop_minutes"] is None


def test_a_launch_stops_billing_on_its_own_unless_told_not_to(cloud_inv):
    from deploy.aws.launch import request, stops_billing
    from deploy.errors import LocalInputError

    inv = load()
    default = request(inv)
    assert (default.autostop_minutes, default.max_hours) == (30, 24)
    assert stops_billing(inv, default).startswith("  stops billing on its own: autostop after 30 idle minutes (10 once its run's end is "
                                                  "stored or fetched); budget cap 24 h after launch.")
    assert (request(inv, idle_minutes="45", max_hours="0.5").autostop_minutes, request(inv, max_hours="0.5").max_hours) == (45, 0.5)
    off = request(inv, idle_minutes="0", max_hours="0")
    assert (off.autostop_minutes, off.max_hours) == (None, None)
    for option, value in (("--idle-minutes", "-1"), ("--max-hours", "soon")):
        with pytest.raises(LocalInputError, match=f"{option} expects a number of"):
            request(inv, **{option[2:].replace("-", "_"): value})
    cloud_inv(autostop_minutes=None, max_hours=None)  # the inventory's way to turn both off
    assert "NO autostop; NO budget cap" in stops_billing(load(), request(load()))


def test_capacity_errors_try_every_zone_then_the_alternative_type(cloud_inv):
    from fabric import Config

    from deploy.aws.launch import launch_host

    cloud_inv(alternatives=["g6.xlarge"])
    s = session()
    zones = sorted(o["Location"] for o in ec2().describe_instance_type_offerings(
        LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": ["g5.xlarge"]}])["InstanceTypeOfferings"])
    calls = refusing(s, ["InsufficientInstanceCapacity"] * len(zones))
    lines = []
    host = launch_host(load(), "gpu1", Config(), quiet(lines), session=s, wait_for_ssh=False)
    assert [(c["type"], c["zone"]) for c in calls] == [("g5.xlarge", z) for z in zones] + [("g6.xlarge", zones[0])]
    [instance] = [i for r in ec2().describe_instances()["Reservations"] for i in r["Instances"]]
    assert instance["InstanceType"] == "g6.xlarge" and instance["Placement"]["AvailabilityZone"] == zones[0]
    assert host.price_per_hour == 0.8048
    assert f"g5.xlarge on-demand in {zones[-1]}: InsufficientInstanceCapacity" in "\n".join(lines)


def test_a_quota_error_skips_that_quota_and_the_failure_names_what_was_tried_and_the_quota_to_raise(cloud_inv):
    from fabric import Config

    from deploy.aws.errors import NoCapacity
    from deploy.aws.launch import launch_host

    cloud_inv(alternatives=["g6.xlarge", "p4d.24xlarge", "p3.2xlarge"])  # moto's us-east-1 offers no p3.2xlarge
    s = session()
    calls = refusing(s, ["VcpuLimitExceeded", "InsufficientInstanceCapacity"] + ["InsufficientInstanceCapacity"] * 10)
    with pytest.raises(NoCapacity) as failure:
        launch_host(load(), "gpu1", Config(), quiet([]), session=s, wait_for_ssh=False)
    # g5: the G quota is reached, so neither another zone nor g6 (also G) is tried; p4d (the P quota) in every zone
    assert [c["type"] for c in calls][:2] == ["g5.xlarge", "p4d.24xlarge"] and {c["type"] for c in calls} == {"g5.xlarge", "p4d.24xlarge"}
    message = str(failure.value)
    assert failure.value.exit_code == 9
    assert "g5.xlarge on-demand in us-east-1a: VcpuLimitExceeded" in message and "p4d.24xlarge on-demand in" in message
    assert "p3.2xlarge: no zone of us-east-1 offers it" in message
    assert 'raise the quota "Running On-Demand G and VT instances" (L-DB2E81BA) in us-east-1' in message
    assert "try again later, another --region" in message
    assert ec2().describe_instances()["Reservations"] == [] and not (Path(os.environ["FACENET_STATE_DIR"]) / "launched.json").exists()


def test_spot_falls_back_to_on_demand_and_a_stopping_spot_host_has_a_persistent_request(cloud_inv):
    from fabric import Config

    from deploy.aws.launch import launch_host

    cloud_inv(spot_interruption="stop")
    s = session()
    calls = refusing(s, ["MaxSpotInstanceCountExceeded"])
    host = launch_host(load(), "gpu1", Config(), quiet([]), session=s, wait_for_ssh=False, spot=True, fallback_on_demand=True)
    assert [c["market"] for c in calls] == ["spot", "on-demand"]  # the spot quota rules out every spot zone at once
    assert calls[0]["params"]["InstanceMarketOptions"]["SpotOptions"] == {"SpotInstanceType": "persistent", "InstanceInterruptionBehavior": "stop"}
    assert calls[1]["params"]["InstanceInitiatedShutdownBehavior"] == "stop" and "InstanceMarketOptions" not in calls[1]["params"]
    assert host.price_per_hour == 1.006

    s = session()
    calls = refusing(s, [])
    cloud_inv(spot_interruption="terminate")
    spot = launch_host(load(), "gpu2", Config(), quiet([]), session=s, wait_for_ssh=False, spot=True)
    options = calls[0]["params"]["InstanceMarketOptions"]["SpotOptions"]
    assert options == {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
    assert calls[0]["params"]["InstanceInitiatedShutdownBehavior"] == "terminate"  # a one-time spot instance cannot stop
    history = ec2().describe_spot_price_history(InstanceTypes=["g5.xlarge"], AvailabilityZone=calls[0]["zone"])["SpotPriceHistory"]
    assert spot.price_per_hour == float(max(history, key=lambda r: r["Timestamp"])["SpotPrice"])  # the spot price, not the list price


def placement_groups(session):
    """moto has no placement groups: the session's Create/DeletePlacementGroup are answered here (the groups kept)."""
    from botocore.awsrequest import AWSResponse

    groups = {}

    def create(params, **_):
        groups[params["body"]["GroupName"]] = params["body"]["Strategy"]
        return AWSResponse("http://127.0.0.1/", 200, {}, None), {}

    def delete(params, **_):
        groups.pop(params["body"]["GroupName"])
        return AWSResponse("http://127.0.0.1/", 200, {}, None), {}

    session.events.register("before-call.ec2.CreatePlacementGroup", create)
    session.events.register("before-call.ec2.DeletePlacementGroup", delete)
    return groups


def test_a_cluster_is_launched_in_one_placement_group_with_private_worker_addresses(cloud_inv):
    from fabric import Config

    from deploy.aws.launch import launch_cluster
    from deploy.aws.terminate import terminate
    from deploy.host import cluster

    s = session()
    groups, calls = placement_groups(s), refusing(s, [])
    hosts = launch_cluster(load(), "pair", 2, Config(), quiet([]), session=s, wait_for_ssh=False)
    assert [h.name for h in hosts] == ["pair-1", "pair-2"]
    assert groups == {"facenet-deploy-pair": "cluster"}
    [call] = calls  # one request for both: all of them or none, in one zone
    assert call["params"]["Placement"]["GroupName"] == "facenet-deploy-pair" and call["params"]["MinCount"] == 2
    instances = {i["InstanceId"]: i for r in ec2().describe_instances()["Reservations"] for i in r["Instances"]}
    inv = load()
    assert inv.clusters["pair"].hosts == ("pair-1", "pair-2")
    privates = sorted(i["PrivateIpAddress"] for i in instances.values())
    assert sorted(w.split(":")[0] for w in cluster.tf_config_workers(inv, inv.clusters["pair"])) == privates
    assert {t["Value"] for i in instances.values() for t in i["Tags"] if t["Key"] == "facenet-deploy"} == {"pair-1", "pair-2"}
    terminate(inv, "pair", quiet([]), session=s)
    assert groups == {} and "pair" not in load().clusters and not {"pair-1", "pair-2"} & set(load().hosts)


def test_terminating_deletes_the_group_and_key_pair_only_once_no_instance_uses_them(cloud_inv):
    from fabric import Config

    from deploy import launched
    from deploy.aws.launch import launch_host
    from deploy.aws.terminate import terminate

    for name in ("gpu1", "gpu2"):
        launch_host(load(), name, Config(), quiet([]), wait_for_ssh=False)
    lines = []
    terminate(load(), "gpu1", quiet(lines))
    assert "gpu1" not in load().hosts and launched.entry("gpu1") is None and "gpu2" in load().hosts
    assert ec2().describe_security_groups(Filters=[{"Name": "group-name", "Values": ["facenet-deploy"]}])["SecurityGroups"]
    assert any(line.startswith("security group") and "kept" in line for line in lines), lines
    terminate(load(), "gpu2", quiet(lines))
    assert not ec2().describe_security_groups(Filters=[{"Name": "group-name", "Values": ["facenet-deploy"]}])["SecurityGroups"]
    assert not [k for k in ec2().describe_key_pairs()["KeyPairs"] if k["KeyName"].startswith("facenet-deploy-")]
    states = {i["State"]["Name"] for r in ec2().describe_instances()["Reservations"] for i in r["Instances"]}
    assert states == {"terminated"}


def test_ssh_is_never_opened_to_everybody_and_a_missing_address_asks_for_launch_ssh_cidr(cloud_inv):
    from deploy.aws.resources import public_address
    from deploy.demo.localhost import free_port
    from deploy.errors import InventoryError, LocalInputError

    cloud_inv(ssh_cidr="0.0.0.0/0")
    with pytest.raises(InventoryError, match="launch.ssh_cidr.*0.0.0.0/0: that opens SSH to the whole internet"):
        load()
    with pytest.raises(LocalInputError, match=r"Could not find this machine's public address .*Set launch.ssh_cidr"):
        public_address(f"http://127.0.0.1:{free_port()}/", timeout=2)  # nothing listens there


def test_a_launched_name_clashing_with_the_inventory_is_an_error_naming_both(cloud_inv, tmp_path):
    from deploy import launched
    from deploy.errors import InventoryError

    launched.add("gpu1", {"instance_id": "i-0123", "region": "us-east-1", "address": "203.0.113.9"})
    data = yaml.safe_load(Path(os.environ["FACENET_INVENTORY"]).read_text())
    data["hosts"] = {"gpu1": {"address": "203.0.113.10"}}
    Path(os.environ["FACENET_INVENTORY"]).write_text(yaml.safe_dump(data))
    with pytest.raises(InventoryError) as e:
        load()
    assert "'gpu1' is both in" in str(e.value) and "inventory.yaml" in str(e.value) and "launched.json" in str(e.value)


def test_the_ssh_config_file_must_exist_and_rsync_follows_it_by_the_hosts_name(tmp_path, monkeypatch):
    from fabric import Config

    from deploy.errors import InventoryError
    from deploy.host.connection import connect_host, rsync_target, ssh_command
    from deploy.inventory import load_inventory

    monkeypatch.setenv("FACENET_STATE_DIR", str(tmp_path / "state"))
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump({"hosts": {"gpu": {"address": "gpu.example", "user": "ubuntu"}}, "ssh": {"config_file": "ssh config"}}))
    with pytest.raises(InventoryError, match=r"'ssh.config_file' in .* names .*ssh config, which is not a file"):
        load_inventory(path)
    (tmp_path / "ssh config").write_text("Host gpu.example\n    HostName 203.0.113.5\n    Port 2222\n    ProxyJump bastion.example\n")
    conn = connect_host(Config(), load_inventory(path), "gpu").conn
    assert (conn.host, conn.port) == ("203.0.113.5", 2222) and conn.gateway is not None  # Fabric: HostName, Port, ProxyJump
    assert f"-F '{tmp_path / 'ssh config'}'" in ssh_command(conn) and "-p 2222" in ssh_command(conn)
    assert rsync_target(conn, "~/runs") == "ubuntu@gpu.example:runs"  # ssh -F resolves the name itself: the bastion applies


def test_a_spot_price_lookup_that_fails_after_the_instance_runs_falls_back_to_the_catalog_and_the_launch_completes(cloud_inv):
    from botocore.exceptions import ClientError
    from fabric import Config

    from deploy import launched
    from deploy.aws.launch import launch_host

    s = session()

    def throttled(params, **_):
        raise ClientError({"Error": {"Code": "RequestLimitExceeded", "Message": "injected throttling"}}, "DescribeSpotPriceHistory")

    s.events.register("before-parameter-build.ec2.DescribeSpotPriceHistory", throttled)
    lines = []
    host = launch_host(load(), "gpu1", Config(), quiet(lines), session=s, wait_for_ssh=False, spot=True)
    [instance] = [i for r in ec2().describe_instances()["Reservations"] for i in r["Instances"]]
    assert host.address == instance["PublicIpAddress"] and host.price_per_hour == 1.006  # the catalog's on-demand price
    entry = launched.entry("gpu1")
    assert entry["address"] == instance["PublicIpAddress"] and "the spot price could not be read (RequestLimitExceeded" in entry["price_source"]
    assert "the on-demand price, an upper bound" in entry["price_source"]
    assert any("$1.006/h (the spot price could not be read (RequestLimitExceeded" in line for line in lines), lines


def test_a_host_that_cannot_be_armed_is_named_after_every_host_was_tried_and_still_recorded(cloud_inv, tmp_path):
    from fabric import Config

    from deploy.aws.launch import launch_cluster
    from deploy.errors import DeployError

    path = cloud_inv()
    data = yaml.safe_load(path.read_text())
    data["remote"] = {"project_dir": str(tmp_path / "project"), "data_dir": str(tmp_path / "data"),
                      "runs_dir": "/proc/no-such-folder/runs"}  # the agent cannot write its settings there
    data["autostop"] = {"command": f"touch {tmp_path / 'powered off'}"}
    path.write_text(yaml.safe_dump(data))
    lines, s = [], session()
    placement_groups(s)  # moto has none
    with pytest.raises(DeployError) as caught:
        launch_cluster(load(), "pair", 2, Config(), quiet(lines), session=s)
    text = str(caught.value)
    assert text.startswith("Launched, but NOT armed (no autostop, no budget cap: it bills until stopped):"), text
    assert "pair-1: " in text and "pair-2: " in text and "`fab down NAME` terminates it (it is recorded)" in text, text
    assert sum("SSH answers on pair-" in line for line in lines) == 2  # both were waited for before either was armed
    assert sorted(json.loads((Path(os.environ["FACENET_STATE_DIR"]) / "launched.json").read_text())["hosts"]) == ["pair-1", "pair-2"]
