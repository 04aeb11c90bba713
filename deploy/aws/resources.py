"""What an instance needs before it runs: AMI, key pair, security group, placement group, your address.

    ami, source = find_ami(cloud, inv)          # launch.ami, else the public SSM parameter launch.ami_parameter
    key = key_pair(cloud, inv)                  # KeyPair(name, key_file, owned): your public key, imported once
    group_id, cidrs = security_group(cloud, cidr, worker_port)   # the tool's own group: SSH from `cidr` only
    cidr, source = ssh_cidr(inv)                # launch.ssh_cidr, else this machine's public address as /32
    placement_group(cloud, name)                # a cluster's: its hosts close together

The security group opens SSH (22) to one address block only, and TensorFlow's worker port only to
members of the group itself; never to 0.0.0.0/0.
"""

import getpass
import hashlib
import ipaddress
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from deploy.aws.errors import aws_errors, code_of, explain
from deploy.errors import DeployError, LocalInputError
from deploy.launched import check_cidr

GROUP_NAME = "facenet-deploy"
TAG = "facenet-deploy"
ADDRESS_SERVICE = "https://checkip.amazonaws.com"  # AWS's own: answers with the caller's public IPv4 address
DEFAULT_PUBLIC_KEYS = ("~/.ssh/id_ed25519.pub", "~/.ssh/id_ecdsa.pub", "~/.ssh/id_rsa.pub")


@dataclass(frozen=True)
class KeyPair:
    name: str
    key_file: str | None  # the private key SSH uses (None: ssh-agent or ~/.ssh/config supply it)
    owned: bool  # imported by the tool: `fab down` deletes it once no instance uses it


def tags(resource_type, **values):
    return [{"ResourceType": resource_type, "Tags": [{"Key": k, "Value": str(v)} for k, v in values.items()]}]


def find_ami(cloud, inv):
    """(AMI id, where it came from)."""
    if inv.launch["ami"]:
        return inv.launch["ami"], "launch.ami"
    name = inv.launch["ami_parameter"]
    try:
        value = cloud.ssm.get_parameter(Name=name)["Parameter"]["Value"]
    except aws_errors() as e:  # a missing parameter and every other refusal are explained
        if code_of(e) == "ParameterNotFound":
            raise DeployError(f"The AMI parameter {name} (launch.ami_parameter) does not exist in {cloud.region}. "
                              "Set launch.ami to an AMI id, or launch.ami_parameter to another public parameter.") from None
        raise explain(e, f"reading the SSM parameter {name}") from None
    return value, f"SSM parameter {name}"


def key_pair(cloud, inv):
    """launch.key_name as it is, else the public key (launch.public_key_file, else ~/.ssh/id_*.pub) imported once."""
    private = inv.launch["key_file"]
    if inv.launch["key_name"]:
        return KeyPair(inv.launch["key_name"], str(Path(private).expanduser()) if private else None, owned=False)
    public = _public_key_file(inv)
    material = public.read_bytes()
    fields = material.split()
    if len(fields) < 2 or not fields[0].startswith((b"ssh-", b"ecdsa-")):
        raise LocalInputError(f"{public} is not an OpenSSH public key (expected a line such as 'ssh-ed25519 AAAA... me@laptop').")
    name = f"facenet-deploy-{hashlib.sha256(fields[1]).hexdigest()[:12]}"  # the same key: the same pair, in every region
    private = Path(private).expanduser() if private else public.with_suffix("")
    if not private.is_file():
        raise LocalInputError(f"The private key of {public} is not at {private}: set launch.key_file to it.")
    try:
        cloud.ec2.describe_key_pairs(KeyNames=[name])
    except aws_errors() as e:
        if code_of(e) != "InvalidKeyPair.NotFound":
            raise explain(e, "looking up the key pair") from None
        try:
            cloud.ec2.import_key_pair(KeyName=name, PublicKeyMaterial=material, TagSpecifications=tags("key-pair", **{TAG: "key"}))
        except aws_errors() as e:
            raise explain(e, f"importing {public} as key pair {name}") from None
    return KeyPair(name, str(private), owned=True)


def _public_key_file(inv):
    given = inv.launch["public_key_file"]
    candidates = [given] if given else DEFAULT_PUBLIC_KEYS
    for candidate in candidates:
        path = Path(os.path.expanduser(candidate))
        if given and not Path(given).is_absolute() and not given.startswith("~"):
            path = inv.path.resolve().parent / given
        if path.is_file():
            return path
    if given:
        raise LocalInputError(f"Inventory key 'launch.public_key_file' in {inv.path} names {given}, which is not a file.")
    raise LocalInputError(f"No SSH public key in {', '.join(DEFAULT_PUBLIC_KEYS)}: create one (`ssh-keygen -t ed25519`), or set "
                          "launch.public_key_file (or launch.key_name, an EC2 key pair of yours, with launch.key_file).")


def ssh_cidr(inv, lookup=None):
    """(the block SSH is opened to, where it came from): launch.ssh_cidr, else this machine's public address."""
    if inv.launch["ssh_cidr"]:
        return check_cidr(inv.launch["ssh_cidr"], f"Inventory key 'launch.ssh_cidr' in {inv.path}"), "launch.ssh_cidr"
    address = (lookup or public_address)()
    return f"{address}/32", f"this machine's public address, from {ADDRESS_SERVICE}; launch.ssh_cidr overrides"


def public_address(url=ADDRESS_SERVICE, timeout=10):
    """This machine's public IPv4 address, as `url` sees it; LocalInputError asking for launch.ssh_cidr if not found."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            text = answer.read(100).decode().strip()
        return str(ipaddress.IPv4Address(text))
    except (OSError, ValueError) as e:
        raise LocalInputError(f"Could not find this machine's public address (asked {url}: {type(e).__name__}: {e}). "
                              "Set launch.ssh_cidr in the inventory to the address block you connect from, e.g. 203.0.113.7/32.") from None


def security_group(cloud, cidr, worker_port):
    """The tool's security group in the default VPC, with SSH from `cidr` and the worker port from itself.
    Returns (group id, every block SSH is open to)."""
    ec2 = cloud.ec2
    try:
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            raise DeployError(f"No default VPC in {cloud.region}: create one (`aws ec2 create-default-vpc --region {cloud.region}`).")
        vpc = vpcs[0]["VpcId"]
        found = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [GROUP_NAME]},
                                                      {"Name": "vpc-id", "Values": [vpc]}])["SecurityGroups"]
        if found:
            group = found[0]
        else:
            created = ec2.create_security_group(GroupName=GROUP_NAME, VpcId=vpc, TagSpecifications=tags("security-group", **{TAG: "group"}),
                                                Description="facenet-deploy: SSH from one address, the worker port within the group")
            group = {"GroupId": created["GroupId"], "IpPermissions": []}
        gid = group["GroupId"]
        ssh_blocks = {r["CidrIp"] for p in group["IpPermissions"] if p.get("FromPort") == 22 for r in p.get("IpRanges", [])}
        ssh_blocks |= {r["CidrIpv6"] for p in group["IpPermissions"] if p.get("FromPort") == 22 for r in p.get("Ipv6Ranges", [])}
        who = f"{getpass.getuser()}, fab launch"
        if cidr not in ssh_blocks:
            ranges = ({"Ipv6Ranges": [{"CidrIpv6": cidr, "Description": who}]} if ":" in cidr
                      else {"IpRanges": [{"CidrIp": cidr, "Description": who}]})
            ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, **ranges}])
            ssh_blocks.add(cidr)
        inside = any(p.get("FromPort") == worker_port and any(g.get("GroupId") == gid for g in p.get("UserIdGroupPairs", []))
                     for p in group["IpPermissions"])
        if not inside:
            ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[{
                "IpProtocol": "tcp", "FromPort": worker_port, "ToPort": worker_port,
                "UserIdGroupPairs": [{"GroupId": gid, "Description": "TensorFlow workers of one cluster"}]}])
    except DeployError:
        raise
    except aws_errors() as e:
        raise explain(e, f"preparing the security group {GROUP_NAME}") from None
    return gid, sorted(ssh_blocks)


def placement_group(cloud, name):
    """A 'cluster' placement group (the hosts of one training close together); made if missing."""
    try:
        cloud.ec2.create_placement_group(GroupName=name, Strategy="cluster", TagSpecifications=tags("placement-group", **{TAG: name}))
    except aws_errors() as e:
        if code_of(e) != "InvalidPlacementGroup.Duplicate":
            raise explain(e, f"creating the placement group {name}") from None
    return name
