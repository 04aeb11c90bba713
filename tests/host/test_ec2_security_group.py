"""The tool's security group: only its own, only its own rules, no stale addresses, no half-internet CIDR.

Real parts: boto3 against moto's standalone server on 127.0.0.1 (EC2 security groups and instances), the
launch code unchanged (deploy.aws.launch.launch_host without the SSH wait).
"""

import pytest

from tests.support.aws import CIDR, ec2, load, quiet

pytestmark = [pytest.mark.ssh]


def default_vpc():
    return ec2().describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]


def group_named(name="facenet-deploy"):
    return ec2().describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]}])["SecurityGroups"]


def launch(name, **options):
    from fabric import Config

    from deploy.aws.launch import launch_host

    lines = []
    launch_host(load(), name, Config(), quiet(lines), wait_for_ssh=False, **options)
    return "\n".join(lines)


def test_a_hand_made_group_of_the_tools_name_is_never_used_nor_deleted(cloud_inv):
    from deploy import launched
    from deploy.aws.terminate import terminate
    from deploy.errors import DeployError

    gid = ec2().create_security_group(GroupName="facenet-deploy", Description="mine", VpcId=default_vpc())["GroupId"]
    ec2().authorize_security_group_ingress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    with pytest.raises(DeployError) as refused:
        launch("gpu1")
    assert f"A security group named facenet-deploy ({gid})" in str(refused.value) and "did not make it" in str(refused.value)
    assert ec2().describe_instances()["Reservations"] == []

    # an entry of an earlier version that launched into it: `fab down` terminates the instance, keeps the group
    from tests.support.aws import moto_ami

    [i] = ec2().run_instances(ImageId=moto_ami("us-east-1"), InstanceType="g5.xlarge", MinCount=1, MaxCount=1,
                              SecurityGroupIds=[gid])["Instances"]
    launched.add("old", {"instance_id": i["InstanceId"], "region": "us-east-1", "security_group": gid})
    lines = []
    terminate(load(), "old", quiet(lines))
    assert [g["GroupId"] for g in group_named()] == [gid], "fab down deleted a security group the tool did not make"
    assert any(f"security group {gid} kept: the tool did not make it" in line for line in lines), lines


@pytest.mark.parametrize("rule, named", [
    ({"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}, "tcp 22 from 0.0.0.0/0 (the whole internet)"),
    ({"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}, "tcp 22 from ::/0 (the whole internet)"),
    ({"IpProtocol": "-1", "IpRanges": [{"CidrIp": "203.0.113.0/24"}]}, "all traffic from 203.0.113.0/24"),
    ({"IpProtocol": "tcp", "FromPort": 8888, "ToPort": 8888, "IpRanges": [{"CidrIp": CIDR, "Description": "jupyter"}]}, f"tcp 8888 from {CIDR}"),
])
def test_the_tools_group_with_a_rule_it_did_not_make_is_refused_naming_the_rule(cloud_inv, rule, named):
    from deploy.errors import DeployError

    launch("gpu1")
    [group] = group_named()
    ec2().authorize_security_group_ingress(GroupId=group["GroupId"], IpPermissions=[rule])
    with pytest.raises(DeployError) as refused:
        launch("gpu2")
    assert "has inbound rules the tool did not make" in str(refused.value) and named in str(refused.value), str(refused.value)
    assert len([i for r in ec2().describe_instances()["Reservations"] for i in r["Instances"]]) == 1


def test_earlier_launches_addresses_are_revoked_once_no_instance_uses_the_group_and_listed_while_one_does(cloud_inv):
    launch("gpu1")
    [first] = [i for r in ec2().describe_instances()["Reservations"] for i in r["Instances"]]
    cloud_inv(ssh_cidr="192.0.2.10/32")  # the laptop moved: another address
    text = launch("gpu2")
    assert f"SSH also open to {CIDR} (earlier launches: instances use the group)" in text, text
    assert sorted(r["CidrIp"] for p in group_named()[0]["IpPermissions"] if p["FromPort"] == 22 for r in p["IpRanges"]) == [
        "192.0.2.10/32", CIDR]

    ec2().terminate_instances(InstanceIds=[i["InstanceId"] for r in ec2().describe_instances()["Reservations"] for i in r["Instances"]])
    del first
    cloud_inv(ssh_cidr="192.0.2.99/32")
    text = launch("gpu3")
    assert "revoked SSH from 192.0.2.10/32, 198.51.100.7/32" in text, text
    assert [r["CidrIp"] for p in group_named()[0]["IpPermissions"] if p["FromPort"] == 22 for r in p["IpRanges"]] == ["192.0.2.99/32"]


def test_an_ssh_cidr_wider_than_a_slash_8_needs_ssh_cidr_wide(cloud_inv):
    from deploy.errors import InventoryError

    for wide in ("0.0.0.0/1", "128.0.0.0/1", "::/1", "2001::/16"):
        cloud_inv(ssh_cidr=wide)
        with pytest.raises(InventoryError, match=r"launch.ssh_cidr.*addresses may reach SSH.*set launch.ssh_cidr_wide: true"):
            load()
    cloud_inv(ssh_cidr="10.0.0.0/8")
    assert load().launch["ssh_cidr"] == "10.0.0.0/8"
    cloud_inv(ssh_cidr="0.0.0.0/1", ssh_cidr_wide=True)
    assert load().launch["ssh_cidr"] == "0.0.0.0/1"
    cloud_inv(ssh_cidr="0.0.0.0/0", ssh_cidr_wide=True)
    with pytest.raises(InventoryError, match="opens SSH to the whole internet"):
        load()
