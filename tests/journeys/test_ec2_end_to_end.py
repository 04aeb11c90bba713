"""The whole life of an EC2 host through the `fab` command line: launch, deploy-full, monitor,
instances, fetch-results, down.

Real parts: `fab` as a user types it; boto3 against moto's standalone server on 127.0.0.1 (EC2,
SSM, key pairs, security groups, spot prices); a real sshd on 127.0.0.1 that the launched
instance's made-up address reaches through the inventory's OpenSSH config file (ssh.config_file:
`Host * !127.0.0.1` -> HostName 127.0.0.1, Port N), read by Fabric and by rsync's ssh alike; real
rsync, tmux and training (tiny); the smoke test, whose estimate lines are checked for the launched host's price,
is the stand-in's (tests/support/standin_fixtures.py smoke_standin_venv). No test hook in the tool: only the
environment (AWS_ENDPOINT_URL, fake credentials) and the inventory differ from a real launch.
"""

import json
import subprocess
import time
from datetime import datetime

import pytest

from tests.support.deploy_env import DeployEnv
from tests.support.helpers import TINY_CONFIG, wait_until, write_config

pytestmark = [pytest.mark.ssh, pytest.mark.slow]

CIDR = "198.51.100.7/32"


def instances_in(region="us-east-1"):
    import boto3

    return [i for r in boto3.client("ec2", region_name=region).describe_instances()["Reservations"] for i in r["Instances"]]


def test_launch_deploy_monitor_fetch_down_on_a_launched_host(aws, ssh_host, smoke_standin_venv, tmp_path):
    from trainer.data.synth import write_corpus

    root = tmp_path / "laptop"
    root.mkdir()
    env = DeployEnv(root, ssh_host, smoke_standin_venv)  # after `aws`: its fab sees AWS_ENDPOINT_URL and the fake credentials
    try:
        ssh_config = root / "ssh config"
        ssh_config.write_text(f"# moto's instance addresses are made up: they lead to the local sshd\n"
                              f"Host * !127.0.0.1\n    HostName 127.0.0.1\n    Port {ssh_host.port}\n")
        powered_off = tmp_path / "powered off"  # autostop's and the budget cap's command: never this machine's poweroff
        env.write(hosts={}, ssh={"config_file": str(ssh_config)},
                  train_config=str(write_config(tmp_path / "train.yaml", **{**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "epochs": 2}})),
                  smoke_config=str(write_config(tmp_path / "smoke.yaml", **{**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "epochs": 1}})),
                  autostop={"command": f"date +%s.%N > '{powered_off}'", "done_minutes": 0.1, "wait_for": []},
                  launch={"region": "us-east-1", "ssh_cidr": CIDR, "user": ssh_host.user, "public_key_file": f"{ssh_host.key_file}.pub",
                          "ssh_wait_seconds": 60})
        write_corpus(env.data, "crema-d", clips=60, seed=5)

        launched_at = time.time()
        launch = env.fab("launch", "gpu1", "--type", "g5.xlarge", timeout=300)  # no --max-hours, no autostop setting: the defaults
        assert launch.returncode == 0, launch.out
        [instance] = instances_in()
        address = instance["PublicIpAddress"]
        assert instance["MetadataOptions"]["HttpTokens"] == "required"
        assert f"SSH only from {CIDR}" in launch.out and f"at {address}" in launch.out
        assert "at $1.006/h each (on-demand list price in us-east-1" in launch.out, launch.out
        assert ("stops billing on its own: autostop after 30 idle minutes (0.1 once its run's end is stored or fetched); "
                "budget cap 24 h after launch. Change with --idle-minutes / --max-hours (0: off)") in launch.out, launch.out
        assert "autostop: armed" in launch.out and "budget cap: the host powers off at" in launch.out and "(24 h after launch)" in launch.out
        assert "fab down gpu1" in launch.out

        deploy = env.fab("-H", "gpu1", "deploy-full", "--run-name", "e2e", timeout=600)
        assert deploy.returncode == 0, deploy.out
        # gpu1's address led to the local sshd (the ssh config's HostName and Port), with the key of the launch
        assert deploy.out.startswith(f"host: gpu1 ({ssh_host.user}@127.0.0.1:{ssh_host.port}), key {ssh_host.key_file}"), deploy.out
        assert "measured on this host:" in deploy.out and "s per training step" in deploy.out, deploy.out
        assert "estimate of the full training: up to 2 epochs x" in deploy.out and "at $1.006/h" in deploy.out, deploy.out
        assert deploy.out.index("estimate of the full training") < deploy.out.index("Training started: run e2e")
        assert "budget cap: the host powers off at" in deploy.out  # every train sends the cap again

        wait_until(lambda: (env.runs / "e2e" / "exit.json").exists(), 300, "the run to end")
        monitor = env.fab("monitor")  # the remembered host: gpu1, priced without anyone typing a price
        assert monitor.returncode == 0 and "FINISHED" in monitor.out.upper() and "at $1.006/h" in monitor.out, monitor.out

        refused = env.fab("down", "gpu1")
        assert refused.returncode == 1 and "run e2e on gpu1 was never fetched" in refused.out, refused.out
        assert instances_in()[0]["State"]["Name"] == "running"

        listed = env.fab("instances")
        assert listed.returncode == 0 and "gpu1" in listed.out and instance["InstanceId"] in listed.out, listed.out
        assert "e2e (finished)" in listed.out and "IDLE:" not in listed.out, listed.out
        for path in (env.runs / ".agent" / "heartbeat", env.runs / "e2e" / "exit.json"):  # nothing happened for 5 minutes
            subprocess.run(["touch", "-d", "5 minutes ago", str(path)], check=True)
        idle = env.fab("instances", "--idle-minutes", "1")
        assert "IDLE: gpu1 has run no training and no fab task for 0h05m" in idle.out, idle.out

        assert not powered_off.exists()  # ended, never fetched nor stored: the full 30 idle minutes
        fetched = env.fab("-H", "gpu1", "fetch-results", "--dest", root / "results")
        assert fetched.returncode == 0 and (root / "results" / "gpu1" / "e2e" / "metrics.json").is_file(), fetched.out
        fetched_at = time.time()
        wait_until(powered_off.exists, 60, "autostop to power the host off once its run was fetched (autostop.done_minutes: 0.1)")
        wait_until(lambda: powered_off.read_text().strip(), 5, "the poweroff time")
        off_at = float(powered_off.read_text())
        assert off_at - fetched_at >= 6 * 0.9, "powered off before the grace after the fetch had passed"
        launch_record = json.loads((env.runs / "e2e" / "launch.json").read_text())
        exit_record = json.loads((env.runs / "e2e" / "exit.json").read_text())
        started, ended = (datetime.fromisoformat(launch_record["started_at"]).timestamp(),
                          datetime.fromisoformat(exit_record["ended_at"]).timestamp())
        billed, useful, setup = off_at - launched_at, ended - started, started - launched_at
        print(f"billing: billed {billed:.0f} s (launch to poweroff), useful {useful:.0f} s (training), set-up {setup:.0f} s, "
              f"after the run {billed - useful - setup:.0f} s (grace 6 s)")  # bench/README.md: `pytest -s` of this test
        assert billed <= useful + setup + 6 + 60, (billed, useful, setup)  # the grace, the agent's poll, the test's own fetch
        down = env.fab("down", "gpu1")
        assert down.returncode == 0, down.out
        assert "terminated gpu1" in down.out and "deleted security group" in down.out and "deleted key pair" in down.out, down.out
        assert instances_in()[0]["State"]["Name"] == "terminated"
        assert json.loads((root / "state" / "launched.json").read_text()) == {"clusters": {}, "hosts": {}}
        after = env.fab("instances")
        assert "No instance launched by the tool is running or stopped" in after.out, after.out
    finally:
        env.cleanup()


def test_down_names_what_it_does_not_know(aws, ssh_host, host_venv, tmp_path):
    root = tmp_path / "laptop"
    root.mkdir()
    env = DeployEnv(root, ssh_host, host_venv)
    env.write(hosts={})
    proc = env.fab("down", "gpu9")
    assert proc.returncode == 2 and "gpu9 was not launched by `fab launch` from here (launched: none)" in proc.out, proc.out
