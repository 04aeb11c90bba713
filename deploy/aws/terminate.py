"""Terminate launched hosts, then delete what the tool made for them once nothing uses it.

    terminate(inv, "gpu1", say)       # a host or a cluster: cancels a persistent spot request, terminates, waits, cleans up, forgets

The security group (only one the tool made: its tag), the tool's own key pair and a cluster's
placement group are deleted when no instance (other than terminated ones) uses them any more; a key pair of yours (launch.key_name)
is never touched. The caller (`fab down`) checks first that no run would be lost.
"""

from deploy import launched
from deploy.aws.errors import aws_errors, code_of, explain
from deploy.aws.resources import TAG
from deploy.aws.session import connect
from deploy.host.remembered import forget_host_keys
from deploy.runs import ledger

LIVE = ["pending", "running", "shutting-down", "stopping", "stopped"]


def terminate(inv, name, say, session=None):
    """Terminate the launched host `name`, or every host of the launched cluster `name`, and forget them."""
    names = launched.members(name)
    entries = {n: launched.entry(n) for n in names}
    by_region = {}
    for host, entry in entries.items():
        by_region.setdefault(entry["region"], []).append(host)
    for region, members in by_region.items():
        cloud = connect(inv, region, session)
        ids = [entries[n]["instance_id"] for n in members]
        try:
            requests = [entries[n]["spot_request"] for n in members if entries[n].get("spot_request")]
            requests += _spot_requests(cloud, ids)
            if requests:  # a persistent request would launch the instance again
                cloud.ec2.cancel_spot_instance_requests(SpotInstanceRequestIds=sorted(set(requests)))
            say(f"terminating {', '.join(n + ' (' + entries[n]['instance_id'] + ')' for n in members)} in {region} ...")
            gone = _terminate(cloud, ids)
            if len(gone) < len(ids):
                cloud.ec2.get_waiter("instance_terminated").wait(InstanceIds=[i for i in ids if i not in gone],
                                                                 WaiterConfig={"Delay": 5, "MaxAttempts": 120})
        except aws_errors() as e:
            raise explain(e, f"terminating {', '.join(ids)}") from None
        say(f"terminated {', '.join(members)}" + (f" ({', '.join(gone)} was gone already)" if gone else ""))
        _clean_up(cloud, [entries[n] for n in members], say)
    forget_host_keys([e["address"] for e in entries.values() if e.get("address")])
    ledger.forget(names)
    launched.remove(name)


def _spot_requests(cloud, ids):
    reservations = cloud.ec2.describe_instances(Filters=[{"Name": "instance-id", "Values": ids}])["Reservations"]
    return [i["SpotInstanceRequestId"] for r in reservations for i in r["Instances"] if i.get("SpotInstanceRequestId")]


def _terminate(cloud, ids):
    """terminate_instances; returns the ids EC2 no longer knows (terminated long ago)."""
    try:
        cloud.ec2.terminate_instances(InstanceIds=ids)
        return []
    except aws_errors() as e:
        if code_of(e) != "InvalidInstanceID.NotFound":
            raise
    gone = []
    for iid in ids:  # one by one, to tell which
        try:
            cloud.ec2.terminate_instances(InstanceIds=[iid])
        except aws_errors() as e:
            if code_of(e) != "InvalidInstanceID.NotFound":
                raise
            gone.append(iid)
    return gone


def _in_use(cloud, name, value):
    live = cloud.ec2.describe_instances(Filters=[{"Name": name, "Values": [value]}, {"Name": "instance-state-name", "Values": LIVE}])
    return [i["InstanceId"] for r in live["Reservations"] for i in r["Instances"]]


def _clean_up(cloud, entries, say):
    for group in sorted({e["security_group"] for e in entries if e.get("security_group")}):
        users = _in_use(cloud, "instance.group-id", group)
        if not _tool_made(cloud, group):
            say(f"security group {group} kept: the tool did not make it (no {TAG}=group tag)", "dim")
        elif users:
            say(f"security group {group} kept: {', '.join(users)} still use it", "dim")
        else:
            _delete(lambda g=group: cloud.ec2.delete_security_group(GroupId=g), f"security group {group}", say)
    for key in sorted({e["key_name"] for e in entries if e.get("key_owned")}):
        users = _in_use(cloud, "key-name", key)
        if users:
            say(f"key pair {key} kept: {', '.join(users)} still use it", "dim")
        else:
            _delete(lambda k=key: cloud.ec2.delete_key_pair(KeyName=k), f"key pair {key}", say)
    for group in sorted({e["placement_group"] for e in entries if e.get("placement_group")}):  # EC2 refuses while one is in it
        _delete(lambda g=group: cloud.ec2.delete_placement_group(GroupName=g), f"placement group {group}", say)


def _tool_made(cloud, group):
    """Whether the tool made security group `group` (its tag); a group EC2 no longer knows counts as not."""
    try:
        [found] = cloud.ec2.describe_security_groups(GroupIds=[group])["SecurityGroups"]
    except aws_errors() + (ValueError,):
        return False
    return {t["Key"]: t["Value"] for t in found.get("Tags", [])}.get(TAG) == "group"


def _delete(call, what, say):
    try:
        call()
        say(f"deleted {what}")
    except aws_errors() as e:  # e.g. DependencyViolation a moment after termination: harmless, say so
        say(f"{what} not deleted ({code_of(e) or type(e).__name__}): delete it in the console if it stays unused", "yellow")
