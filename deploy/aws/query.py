"""What the tool launched in a region, as EC2 says it is (the forgotten-instance finder).

    rows = instances(cloud)      # [Row]: every instance tagged facenet-deploy that is not terminated
    states(cloud, ids)           # {instance id: EC2's state name} of those EC2 still knows

A row's cost so far is its time since its last start (EC2's LaunchTime) at the price recorded at
launch, else the catalog's or the spot price now: an estimate, not the bill.
"""

from dataclasses import dataclass
from datetime import datetime, timezone

from deploy import launched
from deploy.aws import prices
from deploy.aws.errors import aws_errors, explain
from deploy.aws.resources import TAG

SHOWN = ["pending", "running", "shutting-down", "stopping", "stopped"]


@dataclass
class Row:
    name: str
    instance_id: str
    state: str
    instance_type: str
    spot: bool
    zone: str
    address: str | None
    started: datetime
    price_per_hour: float | None
    price_source: str
    recorded: bool  # in this laptop's launched.json (so reachable with -H NAME)

    @property
    def uptime_seconds(self):
        if self.state not in ("pending", "running"):
            return 0.0
        return (datetime.now(timezone.utc) - self.started).total_seconds()

    @property
    def cost_so_far(self):
        return None if self.price_per_hour is None else self.uptime_seconds / 3600 * self.price_per_hour


def instances(cloud):
    known = launched.load()["hosts"]
    by_id = {e.get("instance_id"): (name, e) for name, e in known.items()}
    rows = []
    try:
        pages = cloud.ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "tag-key", "Values": [TAG]}, {"Name": "instance-state-name", "Values": SHOWN}])
        for page in pages:
            for reservation in page["Reservations"]:
                rows += [_row(cloud, i, by_id) for i in reservation["Instances"]]
    except aws_errors() as e:
        raise explain(e, f"listing the instances in {cloud.region}") from None
    return sorted(rows, key=lambda r: (r.name, r.instance_id))


def _row(cloud, i, by_id):
    tags = {t["Key"]: t["Value"] for t in i.get("Tags", [])}
    spot = i.get("InstanceLifecycle") == "spot"
    name, entry = by_id.get(i["InstanceId"], (tags.get(TAG, "?"), None))
    if entry and entry.get("price_per_hour") is not None:
        price, source = entry["price_per_hour"], entry.get("price_source", "recorded at launch")
    else:
        price, source = prices.price_of(cloud, i["InstanceType"], i["Placement"]["AvailabilityZone"], "spot" if spot else "on-demand")
    return Row(name=name, instance_id=i["InstanceId"], state=i["State"]["Name"], instance_type=i["InstanceType"], spot=spot,
               zone=i["Placement"]["AvailabilityZone"], address=i.get("PublicIpAddress") or i.get("PrivateIpAddress"),
               started=i["LaunchTime"], price_per_hour=price, price_source=source, recorded=entry is not None)


def states(cloud, ids):
    """{instance id: state name} of the ids EC2 still lists (a long-terminated instance is missing)."""
    try:
        pages = cloud.ec2.get_paginator("describe_instances").paginate(Filters=[{"Name": "instance-id", "Values": list(ids)}])
        return {i["InstanceId"]: i["State"]["Name"] for page in pages for r in page["Reservations"] for i in r["Instances"]}
    except aws_errors() as e:
        raise explain(e, f"asking EC2 about {', '.join(ids)} in {cloud.region}") from None
