"""AWS as the tests see it: moto's server on 127.0.0.1 (tests/conftest.py's moto_server and aws fixtures) and what
moto lacks (the public DLAMI parameter)."""

import functools

DLAMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id"


@functools.lru_cache
def moto_ami(region):
    """One of the Ubuntu AMIs moto ships (the same after every reset)."""
    import boto3

    images = boto3.client("ec2", region_name=region).describe_images(Owners=["amazon"])["Images"]
    return next(i["ImageId"] for i in images if "ubuntu" in i.get("Name", "").lower())


def seed_public_parameter(region, name, value):
    """A public /aws/service/ parameter in moto's SSM (nobody may put one through the API, as on AWS)."""
    from datetime import datetime, timezone

    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ssm.models import Parameter, ssm_backends

    ssm_backends[DEFAULT_ACCOUNT_ID][region]._parameters[name].append(Parameter(
        account_id=DEFAULT_ACCOUNT_ID, name=name, value=value, parameter_type="String", description=None, allowed_pattern=None,
        keyid=None, last_modified_date=datetime.now(timezone.utc), version=1, data_type="aws:ec2:image"))


CIDR = "198.51.100.7/32"  # documentation addresses: never this machine's

BUCKET = "runs"  # the storage bucket of conftest's launched_host


def ssh_alias_config(path, ssh_host):
    """Every address but 127.0.0.1 leads to the local sshd: moto's instance addresses are made up."""
    path.write_text(f"Host * !127.0.0.1\n    HostName 127.0.0.1\n    Port {ssh_host.port}\n")
    return path


def load():
    from deploy.inventory import load_inventory

    return load_inventory()


def ec2(region="us-east-1"):
    import boto3

    return boto3.client("ec2", region_name=region)


def quiet(lines):
    return lambda message, style=None: lines.append(str(message))


def instances_in(region="us-east-1"):
    import boto3

    return [i for r in boto3.client("ec2", region_name=region).describe_instances()["Reservations"] for i in r["Instances"]]

