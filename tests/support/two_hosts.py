"""Two "machines" for the recovery journeys (tests/journeys/test_watch.py, tests/journeys/test_storage_deploy.py): a real
sshd each on 127.0.0.1, run storage on moto's S3, and what those tests read of them."""

import json
from pathlib import Path

from tests.support.helpers import wait_until
from tests.support.random_faults import kill_sshd


class TwoHosts:
    """Two "machines" a and b, each a real sshd on 127.0.0.1 with folders of its own, one laptop inventory, run
    storage on moto's S3 (the laptop's fake credentials go to the hosts: storage.credentials laptop), a webhook.

    Inventory hosts a and b (`launched=False`, each with its own remote paths); or (`launched=True`) no inventory
    host: `launch_a()` runs `fab launch a --spot` against moto's EC2, and the inventory's OpenSSH config sends a's
    made-up instance address to sshd a and every other address (a replacement `fab watch` launches) to sshd b,
    both accepting the launch's key; a launched host has the inventory's own remote paths."""

    def __init__(self, tmp_path, host_venv, moto_url, webhook, epochs, launched=False):
        import shutil

        from deploy.demo.localhost import LocalSSHHost
        from tests.support.deploy_env import DeployEnv
        from tests.support.helpers import TINY_CONFIG, write_config
        from tests.support.storage_check import new_bucket
        from trainer.data.synth import write_corpus

        self.root, self.launched = tmp_path / "laptop", launched
        self.root.mkdir()
        self.sshd = {"a": LocalSSHHost(tmp_path / "sshd-a").start()}  # sshd_config takes no spaces
        if launched:  # one key for every launched host, as with a real key pair
            (tmp_path / "sshd-b").mkdir()
            for name in ("id_ed25519", "id_ed25519.pub"):
                shutil.copy(self.sshd["a"].root / name, tmp_path / "sshd-b" / name)
        self.sshd["b"] = LocalSSHHost(tmp_path / "sshd-b").start()
        self.env = DeployEnv(self.root, self.sshd["a"], host_venv)  # after `aws`: its fab sees the fake credentials
        self.bucket = new_bucket(moto_url)
        self.moto_url = moto_url
        tiny = lambda n: {**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "epochs": n}}  # noqa: E731
        self.env.write(train_config=str(write_config(tmp_path / "train.yaml", **tiny(epochs))),
                       smoke_config=str(write_config(tmp_path / "smoke.yaml", **tiny(1))),
                       storage={"url": f"s3://{self.bucket}/runs", "endpoint_url": moto_url, "region": "us-east-1", "credentials": "laptop"},
                       notify={"webhook": webhook.url},
                       recovery={"hosts": ["b"], "unreachable_minutes": 0.1, "poll_seconds": 1, "max_restarts": 2})
        if launched:
            self.ssh_config = self.root / "ssh config"
            self.route()
            key = self.sshd["a"].key_file
            self.env.write(hosts={}, ssh={"config_file": str(self.ssh_config)},
                           launch={"region": "us-east-1", "ssh_cidr": "198.51.100.7/32", "user": self.sshd["a"].user,
                                   "public_key_file": f"{key}.pub", "key_file": str(key), "ssh_wait_seconds": 60},
                           recovery={**self.env.inventory["recovery"], "hosts": ["a"], "launch": {"type": "g5.xlarge", "spot": True}})
        else:
            hosts = {}
            for name, sshd in self.sshd.items():
                base = self.root / f"host {name}"
                hosts[name] = {**sshd.host_entry(), "remote": {"project_dir": str(base / "project"), "data_dir": str(base / "data"),
                                                              "runs_dir": str(base / "runs")}}
            self.env.write(hosts=hosts, default_host="a")
        write_corpus(self.env.data, "crema-d", clips=60, seed=5)

    def route(self, a_address=None):
        """The OpenSSH config: host a's instance address to sshd a, every other made-up address to sshd b."""
        first = f"Host {a_address}\n    HostName 127.0.0.1\n    Port {self.sshd['a'].port}\n" if a_address else ""
        other = self.sshd["b" if a_address else "a"].port
        self.ssh_config.write_text(first + f"Host * !127.0.0.1\n    HostName 127.0.0.1\n    Port {other}\n")

    def launch_a(self):
        launch = self.env.fab("launch", "a", "--spot", timeout=300)
        assert launch.returncode == 0, launch.out
        address = json.loads((self.root / "state" / "launched.json").read_text())["hosts"]["a"]["address"]
        self.route(address)
        return address

    def runs(self, name):
        return self.env.runs if self.launched else self.root / f"host {name}" / "runs"

    def latest(self, run):
        """The run's stored pointer (LATEST), or None."""
        from tests.support.storage_check import stored_pointer

        return stored_pointer(self.moto_url, self.bucket, run)

    def terminate(self, name):
        """Host `name` as EC2 leaves a terminated instance: its network gone, every process of it ended, its disk gone."""
        import shutil

        from deploy.demo.localhost import end_host_processes, processes_under

        sshd = self.sshd[name]
        kill_sshd(sshd.proc.pid)  # its network first: the listener and every connection it serves (the watch's too)
        sshd.stop()
        # then at once, as a terminated instance: every process killed (no SIGTERM grace: a trainer finishing its epoch
        # kept the folders here for up to 10 s, while the watch already deployed to a replacement that shares them)
        root = self.env.remote_root if self.launched else self.root / f"host {name}"
        end_host_processes(root, (self.env.inventory["tmux_session"],), timeout=0)
        wait_until(lambda: not processes_under(root), 30, f"host {name}'s processes to end")  # (a zombie names no path)
        if self.launched:  # the inventory's own remote folders (the venv, shared by both "machines" here, stays)
            for key in ("project_dir", "data_dir", "runs_dir"):
                shutil.rmtree(self.env.inventory["remote"][key], ignore_errors=True)
        else:
            shutil.rmtree(root)

    def close(self):
        self.env.cleanup()
        for sshd in self.sshd.values():
            sshd.stop()


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def history_epochs(run_dir):
    import csv

    with open(run_dir / "history.csv") as f:
        return [(int(row["epoch"]), float(row["val_uar"])) for row in csv.DictReader(f)]


def instances(region="us-east-1"):
    import boto3

    reservations = boto3.client("ec2", region_name=region).describe_instances()["Reservations"]
    return {tag["Value"]: i for r in reservations for i in r["Instances"] for tag in i.get("Tags", []) if tag["Key"] == "facenet-deploy"}
