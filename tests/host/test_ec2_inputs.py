"""`fab launch` and `fab instances` with wrong input: a clear error naming what is wrong (exit 2), never a
traceback, and never a silent substitute.

Real parts: `fab` as a user types it and the Python API, boto3 against moto's standalone server on 127.0.0.1.
"""

import os
from pathlib import Path

import pytest
import yaml

from tests.support.aws import ec2, load, quiet
from tests.support.helpers import ROOT
from tests.support.warm_runner import run_fab

pytestmark = [pytest.mark.ssh]


def fab(*args, **env):
    proc = run_fab(args, cwd=ROOT, env={**os.environ, "COLUMNS": "200", **env}, timeout=120)
    proc.out = proc.stdout + proc.stderr
    return proc


def test_a_mistyped_type_is_an_error_naming_it_never_replaced_by_an_alternative(cloud_inv):
    from fabric import Config

    from deploy.aws.launch import launch_host
    from deploy.errors import LocalInputError

    cloud_inv(alternatives=["g6.xlarge"])
    with pytest.raises(LocalInputError) as refused:
        launch_host(load(), "gpu1", Config(), quiet([]), instance_type="g5.xlargee", wait_for_ssh=False)
    assert "g5.xlargee (--type (or launch.type)) is not an instance type EC2 offers in us-east-1" in str(refused.value)
    cloud_inv(alternatives=["g6.xlargee"])
    with pytest.raises(LocalInputError, match=r"g6.xlargee \(launch.alternatives\) is not an instance type"):
        launch_host(load(), "gpu1", Config(), quiet([]), wait_for_ssh=False)
    cloud_inv(alternatives=["g6.xlarge"])  # a real type this region lacks (moto's us-east-1 has no p3): no alternative either
    with pytest.raises(LocalInputError, match=r"No zone of us-east-1 offers p3.2xlarge \(--type"):
        launch_host(load(), "gpu1", Config(), quiet([]), instance_type="p3.2xlarge", wait_for_ssh=False)
    assert ec2().describe_instances()["Reservations"] == []

    typo = fab("launch", "gpu4", "--type", "g5.xlargee")
    assert typo.returncode == 2 and "g5.xlargee" in typo.out and "Traceback" not in typo.out, typo.out


@pytest.mark.parametrize("args, named", [
    (["launch", "gpu1", "--disk", "abc"], "--disk expects a whole number of GB, 8 or more. Received: 'abc'"),
    (["launch", "gpu1", "--disk", "4"], "--disk expects a whole number of GB, 8 or more. Received: '4'"),
    (["launch", "gpu1", "--max-hours", "abc"], "--max-hours expects a number of hours (0: no cap). Received: 'abc'"),
    (["launch", "gpu1", "--max-hours", "-1"], "--max-hours expects a number of hours (0: no cap). Received: '-1'"),
    (["launch", "gpu1", "--idle-minutes", "soon"], "--idle-minutes expects a number of minutes (0: no autostop). Received: 'soon'"),
    (["instances", "--idle-minutes", "abc"], "--idle-minutes expects a number of minutes above 0. Received: 'abc'"),
])
def test_a_bad_option_value_is_exit_2_naming_the_option(cloud_inv, args, named):
    proc = fab(*args)
    assert proc.returncode == 2 and named in proc.out and "Traceback" not in proc.out, proc.out
    assert ec2().describe_instances()["Reservations"] == []


def test_an_unknown_aws_profile_names_the_variable_that_set_it(cloud_inv):
    proc = fab("instances", AWS_PROFILE="nosuch")
    assert proc.returncode == 2 and "AWS_PROFILE='nosuch'" in proc.out and "nosuch" in proc.out, proc.out
    assert "Inventory key 'launch.profile'" not in proc.out and "Traceback" not in proc.out, proc.out


def test_instances_costs_use_the_inventorys_price_per_hour(cloud_inv):
    from fabric import Config

    from deploy.aws.launch import launch_host

    launch_host(load(), "gpu1", Config(), quiet([]), wait_for_ssh=False)
    before = fab("instances")
    assert before.returncode == 0 and "at $1.006/h" in before.out, before.out  # the catalog's, recorded at launch
    path = Path(os.environ["FACENET_INVENTORY"])
    data = yaml.safe_load(path.read_text())
    data["price_per_hour"] = 2.5
    path.write_text(yaml.safe_dump(data))
    after = fab("instances")
    assert after.returncode == 0 and "at $2.5/h" in after.out and "at the inventory's price_per_hour" in after.out, after.out
