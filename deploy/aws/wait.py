"""Waiting for a launched instance: running (a boto3 waiter), then SSH answering (bounded, a line per try).

    instances = running(cloud, ["i-0abc"], say)             # {id: describe_instances' record}
    ssh(config, inventory_path, "gpu1", 600, say)           # returns once `true` ran there as the host's user

SSH is tried through the same connection every task uses (deploy.host.connection: the inventory's user, key,
ssh.config_file, known_hosts), so a host that answers here answers `fab -H gpu1 ...` too.
"""

import time

from invoke.exceptions import CommandTimedOut
from paramiko.ssh_exception import NoValidConnectionsError, SSHException

from deploy.aws.errors import aws_errors, explain
from deploy.errors import DeployError, HostUnreachable
from deploy.host.connection import connect_host
from deploy.inventory import load_inventory

SSH_RETRY_SECONDS = 5


def running(cloud, ids, say, delay=5, max_attempts=120):
    """Wait until every instance of `ids` runs (EC2's own waiter: every `delay` s, 10 minutes at most)."""
    say(f"waiting for {', '.join(ids)} to run ...", "dim")
    try:
        cloud.ec2.get_waiter("instance_running").wait(InstanceIds=ids, WaiterConfig={"Delay": delay, "MaxAttempts": max_attempts})
        reservations = cloud.ec2.describe_instances(InstanceIds=ids)["Reservations"]
    except aws_errors() as e:
        raise explain(e, f"waiting for {', '.join(ids)} to run") from None
    return {i["InstanceId"]: i for r in reservations for i in r["Instances"]}


def ssh(config, inventory_path, name, seconds, say):
    """Try SSH to inventory host `name` until it runs a command, for at most `seconds`."""
    inv = load_inventory(inventory_path)  # with the host as recorded now (its address)
    host = inv.hosts[name]
    started = time.monotonic()
    tries = 0
    while True:
        tries += 1
        target = connect_host(config, inv, name)
        try:
            target.conn.run("true", hide=True, in_stream=False, timeout=30)
            say(f"SSH answers on {name} ({host.address}) after {time.monotonic() - started:.0f} s", "dim")
            return target
        except (NoValidConnectionsError, SSHException, EOFError, OSError, CommandTimedOut) as e:
            # OSError: refused, timed out, unreachable; CommandTimedOut: logged in, but `true` took over 30 s (a busy host)
            last = f"{type(e).__name__}: {e}"[:200]
        finally:
            target.conn.close()
        waited = time.monotonic() - started
        if waited + SSH_RETRY_SECONDS > seconds:
            raise HostUnreachable(f"{name} ({host.address}) runs, but SSH did not answer within {seconds} s ({tries} tries; the last: {last}). "
                                  f"It is recorded: `fab down {name}` terminates it. Check launch.ssh_cidr (your address may have "
                                  f"changed) and the key; launch.ssh_wait_seconds waits longer.")
        say(f"waiting for SSH on {name} ({host.address}:{host.port} as {host.user}): {waited:.0f}/{seconds} s, try {tries}: {last}", "dim")
        time.sleep(SSH_RETRY_SECONDS)


def check_running(instances):
    """Raise if an instance is not running after the waiter (terminated at once: a spot request refused later)."""
    for iid, record in instances.items():
        if record["State"]["Name"] != "running":
            raise DeployError(f"{iid} is {record['State']['Name']} instead of running: {record.get('StateReason', {}).get('Message', '')}")
