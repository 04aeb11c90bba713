"""What an instance needs before it runs: AMI, key pair, security group, placement group, your address.

    ami, source = find_ami(cloud, inv)          # launch.ami, else the public SSM parameter launch.ami_parameter
    key = key_pair(cloud, inv)                  # KeyPair(name, key_file, owned): your public key, imported once
    group = security_group(cloud, cidr, worker_port)   # Group: the tool's own, SSH from `cidr` (+ earlier launches' in use)
    cidr, source = ssh_cidr(inv)                # launch.ssh_cidr, else this machine's public address as /32
    placement_group(cloud, name)                # a cluster's: its hosts close together

The security group opens SSH (22) to one address block only (and those of earlier launches while
instances use the group), and TensorFlow's worker port only to members of the group itself; never
to 0.0.0.0/0. A hand-made group of the same name, or the tool's group with rules it did not make,
is refused, never used or deleted.
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
from deploy.inventory.checks import check_cidr

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
        return (check_cidr(inv.launch["ssh_cidr"], f"Inventory key 'launch.ssh_cidr' in {inv.path}", wide=inv.launch["ssh_cidr_wide"]),
                "launch.ssh_cidr")
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


TOOL_RULE = "fab launch"  # the end of the description of every SSH rule the tool adds ("USER, fab launch")
LIVE = ["pending", "running", "shutting-down", "stopping", "stopped"]


@dataclass(frozen=True)
class Group:
    id: str
    ssh: tuple  # every block SSH is open to now
    revoked: tuple  # SSH blocks of earlier launches revoked just now (no instance used the group)
    kept: tuple  # SSH blocks of earlier launches kept: instances use the group (their launcher's address)


def security_group(cloud, cidr, worker_port):
    """The tool's security group in the default VPC, with SSH from `cidr` and the worker port from itself (a Group).

    Only a group the tool made is used (tag facenet-deploy=group): a hand-made group of that name is refused, as is
    the tool's group with any rule the tool does not make (anything open to 0.0.0.0/0 or ::/0, another port, all
    traffic, another group): the error names each. SSH blocks of earlier launches are revoked when no instance uses
    the group, else kept and listed."""
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
            check_own_group(group, worker_port, cloud.region)
        else:
            created = ec2.create_security_group(GroupName=GROUP_NAME, VpcId=vpc, TagSpecifications=tags("security-group", **{TAG: "group"}),
                                                Description="facenet-deploy: SSH from one address, the worker port within the group")
            group = {"GroupId": created["GroupId"], "IpPermissions": []}
        gid = group["GroupId"]
        ssh_blocks = set(_ssh_blocks(group))
        earlier = sorted(ssh_blocks - {cidr})
        revoked, kept = [], []
        if earlier:
            users = ec2.describe_instances(Filters=[{"Name": "instance.group-id", "Values": [gid]},
                                                    {"Name": "instance-state-name", "Values": LIVE}])["Reservations"]
            if users:
                kept = earlier
            else:  # nobody uses them: the addresses of earlier launches (another café, a changed home address) are closed
                ec2.revoke_security_group_ingress(GroupId=gid, IpPermissions=[_ssh_rule(b) for b in earlier])
                revoked = earlier
                ssh_blocks -= set(earlier)
        if cidr not in ssh_blocks:
            who = f"{getpass.getuser()}, {TOOL_RULE}"
            ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[_ssh_rule(cidr, who)])
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
    return Group(gid, tuple(sorted(ssh_blocks)), tuple(revoked), tuple(kept))


def _ssh_rule(block, description=None):
    extra = {"Description": description} if description else {}
    if ":" in block:
        return {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "Ipv6Ranges": [{"CidrIpv6": block, **extra}]}
    return {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": block, **extra}]}


def _ssh_blocks(group):
    return [r.get("CidrIp") or r.get("CidrIpv6") for p in group["IpPermissions"] if _is_ssh(p)
            for r in p.get("IpRanges", []) + p.get("Ipv6Ranges", [])]


def _is_ssh(p):
    return p.get("IpProtocol") == "tcp" and p.get("FromPort") == 22 and p.get("ToPort") == 22


def foreign_rules(group, worker_port):
    """The inbound rules of `group` the tool does not make, in words: what is open to the world, or open at all but
    SSH from an address block (the tool's, by its description) and the worker port from the group itself."""
    gid, found = group["GroupId"], []
    for p in group.get("IpPermissions", []):
        proto = "all traffic" if p.get("IpProtocol") == "-1" else f"{p.get('IpProtocol')} " + (
            f"{p.get('FromPort')}" if p.get("FromPort") == p.get("ToPort") else f"{p.get('FromPort')}-{p.get('ToPort')}")
        for r in p.get("IpRanges", []) + p.get("Ipv6Ranges", []):
            block = r.get("CidrIp") or r.get("CidrIpv6")
            ours = _is_ssh(p) and str(r.get("Description") or "").endswith(TOOL_RULE) and not block.endswith("/0")
            if not ours:
                found.append(f"{proto} from {block}" + (" (the whole internet)" if block.endswith("/0") else ""))
        for g in p.get("UserIdGroupPairs", []):
            if not (p.get("IpProtocol") == "tcp" and p.get("FromPort") == p.get("ToPort") == worker_port and g.get("GroupId") == gid):
                found.append(f"{proto} from the group {g.get('GroupId')}")
        for prefix in p.get("PrefixListIds", []):
            found.append(f"{proto} from the prefix list {prefix.get('PrefixListId')}")
    return found


def check_own_group(group, worker_port, region):
    """DeployError unless `group` is the tool's own (its tag) with none but the tool's rules."""
    gid, labels = group["GroupId"], {t["Key"]: t["Value"] for t in group.get("Tags", [])}
    if labels.get(TAG) != "group":
        raise DeployError(f"A security group named {GROUP_NAME} ({gid}) exists in the default VPC of {region}, but `fab launch` did "
                          f"not make it (it lacks the tag {TAG}=group): the tool neither launches into it nor ever deletes it. "
                          f"Delete it if it is unused (`aws ec2 delete-security-group --region {region} --group-id {gid}`), "
                          "or rename yours, then launch again.")
    foreign = foreign_rules(group, worker_port)
    if foreign:
        raise DeployError(f"The tool's security group {GROUP_NAME} ({gid}, {region}) has inbound rules the tool did not make: "
                          f"{'; '.join(foreign)}. Not launching into it: revoke them (EC2 console, Security Groups, "
                          f"{gid}, Inbound rules), then launch again.")


def placement_group(cloud, name):
    """A 'cluster' placement group (the hosts of one training close together); made if missing."""
    try:
        cloud.ec2.create_placement_group(GroupName=name, Strategy="cluster", TagSpecifications=tags("placement-group", **{TAG: name}))
    except aws_errors() as e:
        if code_of(e) != "InvalidPlacementGroup.Duplicate":
            raise explain(e, f"creating the placement group {name}") from None
    return name
