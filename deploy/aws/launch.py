"""Launch EC2 hosts: one (`launch_host`) or a cluster in one placement group (`launch_cluster`).

    host = launch_host(inv, "gpu1", config, say, instance_type="g5.xlarge", spot=True)   # the inventory Host
    hosts = launch_cluster(inv, "pair", 2, config, say)       # pair-1, pair-2 and a `clusters: pair` entry

The plan: AMI, key pair, security group (resources.py); then run_instances over each market
(spot, then on-demand with --fallback-on-demand), each type (--type, then launch.alternatives)
and each zone that offers it, as errors.Failover decides; the instances are recorded at once
(deploy.launched), so none is ever untracked; then EC2's waiter for running, the price, SSH
answering, and the host agent armed: autostop (launch.autostop_minutes) and the budget cap
(launch.max_hours), both on by default, so a launched host stops billing on its own. `config` is the Fabric config
the SSH connections use. Recovery calls `launch_host` the same way to get a replacement.
"""

import getpass
import platform
import re
import uuid
from dataclasses import dataclass

from deploy import launched
from deploy.aws import prices, wait
from deploy.aws.errors import Attempt, Failover, aws_errors, code_of, explain
from deploy.aws.resources import TAG, find_ami, key_pair, placement_group, security_group, ssh_cidr, tags
from deploy.aws.session import connect
from deploy.errors import DeployError, LocalInputError
from deploy.host.agent import arm_launched
from deploy.host.remembered import forget_host_keys
from deploy.inventory import load_inventory

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")


@dataclass(frozen=True)
class Request:
    types: tuple  # the type asked for, then launch.alternatives
    markets: tuple  # ("spot",), ("spot", "on-demand") or ("on-demand",)
    interruption: str
    disk_gb: int
    region: str | None
    max_hours: float | None
    autostop_minutes: float | None


def request(inv, instance_type=None, spot=None, fallback_on_demand=None, disk_gb=None, region=None, max_hours=None, idle_minutes=None):
    """The launch options: the arguments given, else the inventory's `launch:` settings."""
    s = inv.launch
    spot = s["spot"] if spot is None else spot
    fallback = s["fallback_on_demand"] if fallback_on_demand is None else fallback_on_demand
    first = instance_type or s["type"]
    types = tuple(dict.fromkeys([first, *s["alternatives"]]))
    disk_gb = s["disk_gb"] if disk_gb is None else number(disk_gb, "--disk", "a whole number of GB, 8 or more", int, 8)
    max_hours = s["max_hours"] if max_hours is None else number(max_hours, "--max-hours", "a number of hours (0: no cap)", float, 0) or None
    idle = inv.autostop["idle_minutes"] or s["autostop_minutes"] if idle_minutes is None else \
        number(idle_minutes, "--idle-minutes", "a number of minutes (0: no autostop)", float, 0) or None
    markets = ("spot", "on-demand") if spot and fallback else ("spot",) if spot else ("on-demand",)
    return Request(types, markets, s["spot_interruption"], disk_gb, region, max_hours, idle)


def stops_billing(inv, req):
    """The plan's line on how the host stops billing on its own, and how to change that."""
    auto, done = req.autostop_minutes, inv.autostop["done_minutes"]
    parts = [f"autostop after {auto:g} idle minutes" + (f" ({done:g} once its run's end is stored or fetched)" if done and done < auto else "")
             if auto else "NO autostop", f"budget cap {req.max_hours:g} h after launch" if req.max_hours else "NO budget cap"]
    return (f"  stops billing on its own: {'; '.join(parts)}. Change with --idle-minutes / --max-hours (0: off), or "
            "launch.autostop_minutes / launch.max_hours in the inventory; `fab -H NAME autostop --cancel` disarms autostop")


def number(value, option, expected, kind, least, above=False):
    """`value` of a command-line option as `kind` (int or float), at least `least` (above it with `above`); LocalInputError
    naming the option otherwise."""
    try:
        parsed = kind(str(value).strip())
    except ValueError:
        parsed = None
    if parsed is None or parsed != parsed or parsed in (float("inf"), float("-inf")) or parsed < least or (above and parsed == least):
        raise LocalInputError(f"{option} expects {expected}. Received: {value!r}")
    return parsed


def launch_host(inv, name, config, say, session=None, wait_for_ssh=True, **options):
    """Launch one instance as inventory host `name` and return it (deploy.inventory.Host)."""
    return _launch(inv, [name], None, config, say, session, wait_for_ssh, options)[0]


def launch_cluster(inv, cluster, count, config, say, session=None, wait_for_ssh=True, **options):
    """Launch `count` instances in one placement group as hosts CLUSTER-1..N and the cluster `cluster`
    (workers reach each other at their private addresses); returns the hosts, the chief first."""
    if count < 2:
        raise LocalInputError(f"--count expects 2 or more hosts for a cluster. Received: {count}")
    hosts = _launch(inv, [f"{cluster}-{k}" for k in range(1, count + 1)], cluster, config, say, session, wait_for_ssh, options)
    return hosts


def check_names(inv, names, cluster):
    known = launched.load()
    for name in [*names, *([cluster] if cluster else [])]:
        if not NAME.fullmatch(name):
            raise LocalInputError(f"Host name {name!r}: expected 1-63 letters, digits, '_' or '-', starting with a letter or digit.")
        if name in known["hosts"] or name in known["clusters"]:
            iid = known["hosts"].get(name, {}).get("instance_id", "a cluster")
            raise LocalInputError(f"{name} is launched already ({iid}): `fab down {name}` first, or pick another name.")
        if name in inv.hosts or name in inv.clusters:
            raise LocalInputError(f"{name} is a host or cluster of {inv.path}: pick another name for the launched one.")


def _launch(inv, names, cluster, config, say, session, wait_for_ssh, options):
    check_names(inv, names, cluster)
    req = request(inv, **options)
    cloud = connect(inv, req.region, session)
    ami, ami_source = find_ami(cloud, inv)
    key = key_pair(cloud, inv)
    cidr, cidr_source = ssh_cidr(inv)
    sg = security_group(cloud, cidr, inv.launch["worker_port"])
    group = sg.id
    what = f"{len(names)} hosts ({', '.join(names)}) as cluster {cluster}" if cluster else names[0]
    say(f"launching {what} in {cloud.region}: {' or '.join(req.types)}, {' then '.join(req.markets)}"
        + (f" (a reclaimed spot instance: {req.interruption})" if "spot" in req.markets else ""))
    say(f"  AMI {ami} ({ami_source}); root disk {req.disk_gb} GB gp3; key pair {key.name}")
    say(f"  security group {group}: SSH only from {cidr} ({cidr_source}); the worker port {inv.launch['worker_port']} only "
        f"within the group" + (f"; SSH also open to {', '.join(sg.kept)} (earlier launches: instances use the group)" if sg.kept else ""))
    if sg.revoked:
        say(f"  revoked SSH from {', '.join(sg.revoked)} in {group}: earlier launches' addresses, no instance uses the group")
    say(stops_billing(inv, req), None if req.max_hours and req.autostop_minutes else "yellow")
    group_name = placement_group(cloud, f"facenet-deploy-{cluster}") if cluster else None
    answer, attempt = run_with_failover(cloud, inv, req, say, names, cluster, ami, key, group, group_name)
    ids = [i["InstanceId"] for i in answer["Instances"]]
    for name, instance in zip(names, answer["Instances"]):
        launched.add(name, record(inv, req, attempt, instance, cloud, ami, key, group, group_name, cluster))
    if cluster:
        for name, iid in zip(names, ids):
            cloud.ec2.create_tags(Resources=[iid], Tags=[{"Key": TAG, "Value": name}, {"Key": "Name", "Value": f"facenet-deploy {name}"}])
        launched.add_cluster(cluster, names, inv.launch["worker_port"], group_name)
    say(f"launched {', '.join(ids)} ({attempt}); recorded in {launched.path()}")
    instances = wait.running(cloud, ids, say)
    wait.check_running(instances)
    record_running(cloud, attempt, names, ids, instances, say)
    if wait_for_ssh:
        targets = [wait.ssh(config, inv.path, name, inv.launch["ssh_wait_seconds"], say) for name in names]
        if req.max_hours or req.autostop_minutes:
            arm(targets, inv.path, say)
    now = load_inventory(inv.path)
    return [now.hosts[name] for name in names]


def run_with_failover(cloud, inv, req, say, names, cluster, ami, key, group, group_name):
    """run_instances on the first (zone, type, market) that has the capacity, in the order Failover gives;
    (EC2's answer, the attempt that took it). Raises what Failover decides once none is left."""
    root = root_device(cloud, ami)
    tries, missing = attempts(cloud, req)
    plan = Failover(tries, cloud.region)
    for instance_type in missing:
        plan.not_offered(instance_type, f"no zone of {cloud.region} offers it")
        say(f"  {instance_type}: no zone of {cloud.region} offers it", "yellow")
    for attempt in plan:
        say(f"  trying {attempt} ...", "dim")
        try:
            return cloud.ec2.run_instances(**run_args(inv, req, attempt, names, cluster, ami, root, key, group, group_name)), attempt
        except aws_errors() as e:
            plan.failed(attempt, e)  # raises unless another zone or type may do
            say(f"  {attempt}: {code_of(e)}", "yellow")
    raise plan.exhausted()


def record_running(cloud, attempt, names, ids, instances, say):
    """Each running instance's addresses, price and launch time in the launched record, said."""
    price, source = prices.price_of(cloud, attempt.instance_type, attempt.zone, attempt.market)
    for name, iid in zip(names, ids):
        i = instances[iid]
        address = i.get("PublicIpAddress") or i["PrivateIpAddress"]
        launched.update(name, address=address, worker_address=i["PrivateIpAddress"], price_per_hour=price, price_source=source,
                        launched_at=i["LaunchTime"].isoformat())
        forget_host_keys([address])  # EC2 reuses addresses: a key kept for an earlier machine is not this one's
        say(f"{name}: {iid} running in {attempt.zone} at {address} (private {i['PrivateIpAddress']}); "
            + (f"{prices.usd(price)}/h ({source})" if price is not None else source))


def arm(targets, inventory_path, say):
    """Arm autostop and the budget cap on every new host; a host that cannot be armed is named (it runs and bills) after
    the others were armed, with what to do."""
    failed = []
    for target in targets:
        try:
            arm_launched(target, inventory_path, say)
        except Exception as e:  # noqa: BLE001 - the instance runs either way: say so, then arm the next one
            failed.append((target.label, e))
    if failed:
        raise DeployError("Launched, but NOT armed (no autostop, no budget cap: it bills until stopped):\n  "
                          + "\n  ".join(f"{name}: {str(e).removeprefix('error: ')}" for name, e in failed)
                          + "\nFix that, then `fab -H NAME autostop --idle-minutes 30`; or `fab down NAME` terminates it (it is recorded).")


def attempts(cloud, req):
    """(every (type, zone, market) to try, in order; the types no zone offers)."""
    found, missing = [], []
    for index, instance_type in enumerate(req.types):
        try:
            offers = cloud.ec2.describe_instance_type_offerings(LocationType="availability-zone",
                                                                Filters=[{"Name": "instance-type", "Values": [instance_type]}])
        except aws_errors() as e:
            raise explain(e, f"looking up the zones that offer {instance_type}") from None
        zones = sorted(o["Location"] for o in offers["InstanceTypeOfferings"])
        if not zones:
            given = "--type (or launch.type)" if index == 0 else "launch.alternatives"
            if not prices.listed(instance_type):  # neither a zone nor the catalog knows it: a typo, never replaced by another type
                raise LocalInputError(f"{instance_type} ({given}) is not an instance type EC2 offers in {cloud.region} nor one of the "
                                      "price catalog (deploy/aws/prices.json): check its spelling, e.g. g5.xlarge.")
            if index == 0:  # alternatives are for capacity and quota errors, not for a type the region lacks
                raise LocalInputError(f"No zone of {cloud.region} offers {instance_type} ({given}): pick another --type, or "
                                      "another --region (launch.region) that offers it.")
            missing.append(instance_type)
        found.append((instance_type, zones))
    plan = [Attempt(t, z, m) for m in req.markets for t, zones in found for z in zones]
    if not plan:
        raise DeployError(f"No zone of {cloud.region} offers {', '.join(missing)}: pick another --type or --region.")
    return plan, missing


def root_device(cloud, ami):
    try:
        images = cloud.ec2.describe_images(ImageIds=[ami])["Images"]
    except aws_errors() as e:
        raise explain(e, f"looking up the AMI {ami}") from None
    if not images:
        raise DeployError(f"The AMI {ami} does not exist in {cloud.region} (AMIs are per region): set launch.ami for this region.")
    return images[0].get("RootDeviceName") or "/dev/sda1"


def run_args(inv, req, attempt, names, cluster, ami, root, key, group, group_name):
    """run_instances' arguments for one attempt: IMDSv2 required, the root disk, tags, spot options."""
    one_time_spot = attempt.market == "spot" and req.interruption == "terminate"
    labels = {TAG: cluster or names[0], "Name": f"facenet-deploy {cluster or names[0]}", f"{TAG}:user": f"{getpass.getuser()}@{platform.node()}"}
    if cluster:
        labels[f"{TAG}:cluster"] = cluster
    if req.max_hours:
        labels[f"{TAG}:max-hours"] = f"{req.max_hours:g}"
    args = {
        "ImageId": ami, "InstanceType": attempt.instance_type, "MinCount": len(names), "MaxCount": len(names),
        "KeyName": key.name, "SecurityGroupIds": [group], "ClientToken": uuid.uuid4().hex,
        "Placement": {"AvailabilityZone": attempt.zone, **({"GroupName": group_name} if group_name else {})},
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1},
        "BlockDeviceMappings": [{"DeviceName": root, "Ebs": {"VolumeSize": req.disk_gb, "VolumeType": "gp3", "DeleteOnTermination": True}}],
        "TagSpecifications": tags("instance", **labels) + tags("volume", **labels),
        # a one-time spot instance cannot stop: a poweroff (autostop, budget cap) terminates it; any other stops
        "InstanceInitiatedShutdownBehavior": "terminate" if one_time_spot else "stop",
    }
    if attempt.market == "spot":
        args["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
            "SpotInstanceType": "one-time" if one_time_spot else "persistent", "InstanceInterruptionBehavior": req.interruption}}
    if inv.launch["instance_profile"]:
        args["IamInstanceProfile"] = {"Name": inv.launch["instance_profile"]}
    return args


def record(inv, req, attempt, instance, cloud, ami, key, group, group_name, cluster):
    """What deploy.launched keeps of a new instance (its address once it runs)."""
    return {
        "instance_id": instance["InstanceId"], "region": cloud.region, "zone": attempt.zone, "instance_type": attempt.instance_type,
        "market": attempt.market, "spot_interruption": req.interruption if attempt.market == "spot" else None,
        "spot_request": instance.get("SpotInstanceRequestId"), "ami": ami, "security_group": group, "key_name": key.name,
        "key_owned": key.owned, "key_file": key.key_file, "user": inv.launch["user"], "placement_group": group_name,
        "cluster": cluster, "max_hours": req.max_hours, "autostop_minutes": req.autostop_minutes, "launched_at": instance["LaunchTime"].isoformat(),
    }
