"""What a host costs per hour: the shipped on-demand catalog (prices.json, dated) and the spot price now.

    price, source = on_demand("g5.xlarge", "us-east-1")    # 1.006, "on-demand list price in us-east-1 (catalog of 2026-06-17)"
    price, source = spot(cloud, "g5.xlarge", "us-east-1a")  # describe_spot_price_history, the latest in that zone
    price, source = price_of(cloud, "g5.xlarge", "us-east-1a", "spot")

A type the catalog lacks has no price (None): set price_per_hour in the inventory. A region the
catalog lacks gets us-east-1's price, and the source says so.
"""

import json
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

CATALOG = Path(__file__).with_name("prices.json")


@lru_cache(maxsize=1)
def catalog():
    return json.loads(CATALOG.read_text())


def listed(instance_type):
    """Whether the catalog knows `instance_type` in any region."""
    return any(instance_type in table for table in catalog()["regions"].values())


def usd(price):
    """A price per hour for people: $1.006, $0.1234, $0.000010 (a spot price can be tiny)."""
    return f"${price:.4g}" if price >= 0.01 else f"${price:.6f}"


def on_demand(instance_type, region):
    data = catalog()
    table_region = data["same_as"].get(region, region)
    table = data["regions"].get(table_region)
    if table is not None and instance_type in table:
        return table[instance_type], f"on-demand list price in {region} (catalog of {data['date']})"
    fallback = data["regions"]["us-east-1"].get(instance_type)
    if fallback is None:
        return None, f"{instance_type} is not in the price catalog (deploy/aws/prices.json): set price_per_hour in the inventory"
    return fallback, f"us-east-1's on-demand list price (catalog of {data['date']}; {region}'s may differ: set price_per_hour)"


def spot(cloud, instance_type, zone):
    """The latest spot price of `instance_type` in `zone` (Linux), or (None, why)."""
    now = datetime.now(timezone.utc)
    answer = cloud.ec2.describe_spot_price_history(InstanceTypes=[instance_type], ProductDescriptions=["Linux/UNIX"],
                                                   AvailabilityZone=zone, StartTime=now, MaxResults=20)
    records = [r for r in answer.get("SpotPriceHistory", []) if r.get("AvailabilityZone") == zone]
    if not records:
        return None, f"no spot price for {instance_type} in {zone}"
    latest = max(records, key=lambda r: r["Timestamp"])
    return float(latest["SpotPrice"]), f"spot price in {zone} at launch ({now:%Y-%m-%d %H:%M} UTC; it moves)"


def price_of(cloud, instance_type, zone, market):
    """(USD per hour, where it comes from) of one instance in `zone`; spot falls back to the on-demand price, an upper bound,
    also when EC2 does not answer the spot price (throttled, denied): a price is never why a launch stops half-way."""
    from deploy.aws.errors import aws_errors, code_of

    if market == "spot":
        try:
            price, source = spot(cloud, instance_type, zone)
        except aws_errors() as e:
            price, source = None, f"the spot price could not be read ({code_of(e) or type(e).__name__}: {str(e)[:120]})"
        if price is not None:
            return price, source
        listed, _ = on_demand(instance_type, cloud.region)
        return listed, f"{source}; the on-demand price, an upper bound"
    return on_demand(instance_type, cloud.region)
