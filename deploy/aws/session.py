"""boto3 clients for one region, from the inventory's `launch:` settings.

    cloud = connect(inv, region=None)     # Cloud(ec2, ssm, region, session)
    cloud = connect(inv, session=s)       # a boto3.Session of the caller's (its event hooks apply)

Credentials and the endpoint come from boto3's usual chain (AWS_PROFILE or launch.profile,
~/.aws/credentials, SSO, instance roles; AWS_ENDPOINT_URL for an EC2-compatible endpoint).
"""

import os
from dataclasses import dataclass

from deploy.errors import LocalInputError


@dataclass
class Cloud:
    ec2: object
    ssm: object
    region: str
    session: object


def boto3_module():
    try:
        import boto3
    except ImportError:
        raise LocalInputError("The EC2 tasks need boto3: pip install -e '.[aws]' (or `make venv`, which installs it).") from None
    return boto3


def connect(inv, region=None, session=None):
    """Clients for `region` (else launch.region, else the profile's or AWS_DEFAULT_REGION)."""
    boto3 = boto3_module()
    import botocore.exceptions

    try:
        session = session or boto3.session.Session(profile_name=inv.launch["profile"])
    except botocore.exceptions.ProfileNotFound as e:
        if inv.launch["profile"]:
            raise LocalInputError(f"Inventory key 'launch.profile' in {inv.path}: {e} (profiles are in ~/.aws/config).") from None
        where = next((f"the environment variable {v}={os.environ[v]!r}" for v in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE") if os.environ.get(v)),
                     "boto3's default profile")
        raise LocalInputError(f"{where}: {e} (profiles are in ~/.aws/config; unset it, or fix the name; launch.profile in "
                              f"{inv.path} would override it).") from None
    region = region or inv.launch["region"] or session.region_name
    if not region:
        raise LocalInputError(f"No AWS region: set launch.region in {inv.path} (e.g. us-east-1), or pass --region, "
                              "or AWS_DEFAULT_REGION.")
    return Cloud(ec2=session.client("ec2", region_name=region), ssm=session.client("ssm", region_name=region),
                 region=region, session=session)
