"""Two "machines" for the sweep tests (tests/host/test_sweep.py): a real sshd each on 127.0.0.1, each with folders and
a tmux server of its own (TMUX_TMPDIR, set by its sshd: two real hosts never share one), the stand-in trainer, and
optionally run storage on moto's S3.

    hosts = SweepHosts(tmp_path, standin_venv, epochs=6, moto_url=aws)
    hosts.env.fab("sweep", "lr", "--set", "train.learning_rate=0.001,0.0003", "--hosts", "a,b")
    hosts.terminate("a"); hosts.close()
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

from tests.support.helpers import wait_until
from tests.support.random_faults import kill_sshd

SMOKE_ESTIMATE_SECONDS = 9.0  # the smoke test's estimate of one training, seeded on each host (a real one trains TensorFlow)


class SweepHosts:
    def __init__(self, tmp_path, venv, epochs, moto_url=None):
        from deploy.demo.localhost import LocalSSHHost
        from tests.support.deploy_env import DeployEnv
        from tests.support.helpers import TINY_CONFIG, write_config
        from trainer.data.synth import write_corpus

        self.root = tmp_path / "laptop"
        self.root.mkdir()
        self.tmux = {name: tmp_path / f"tmux-{name}" for name in ("a", "b")}  # sshd_config takes no spaces
        self.sshd = {}
        for name, folder in self.tmux.items():
            folder.mkdir()
            self.sshd[name] = LocalSSHHost(tmp_path / f"sshd-{name}", env={"TMUX_TMPDIR": folder}).start()
        self.env = DeployEnv(self.root, self.sshd["a"], venv)
        train = {**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "epochs": epochs}}
        hosts = {}
        for name, sshd in self.sshd.items():
            base = self.root / f"host {name}"
            hosts[name] = {**sshd.host_entry(), "remote": {"project_dir": str(base / "project"), "data_dir": str(base / "data"),
                                                          "runs_dir": str(base / "runs")}, "price_per_hour": 1.5}
            seed_smoke_estimate(base / "runs")
        self.env.write(hosts=hosts, default_host="a", train_config=str(write_config(tmp_path / "train.yaml", **train)),
                       recovery={"unreachable_minutes": 0.1, "poll_seconds": 1})
        if moto_url:
            from tests.support.storage_check import new_bucket

            self.bucket, self.moto_url = new_bucket(moto_url), moto_url
            self.env.write(storage={"url": f"s3://{self.bucket}/runs", "endpoint_url": moto_url, "region": "us-east-1",
                                    "credentials": "laptop"})
        write_corpus(self.env.data, "crema-d", clips=60, seed=5)

    def runs(self, name):
        return self.root / f"host {name}" / "runs"

    def latest(self, run):
        """The run's stored pointer (LATEST), or None."""
        from tests.support.storage_check import stored_pointer

        return stored_pointer(self.moto_url, self.bucket, run)

    def state(self):
        """What each host's sweep runner and runs were doing (runner.json, status.json, exit records, the tmux sessions),
        and storage's pointers: a failing test's context."""
        lines = []
        for name in self.sshd:
            runs = self.runs(name)
            if not runs.is_dir():
                lines.append(f"host {name}: gone")
                continue
            for path in sorted(runs.glob(".sweeps/*/runner.json")) + sorted(runs.glob("*/status.json")):
                lines.append(f"host {name}: {path.relative_to(runs)}: {path.read_text(errors='replace')[:600]}")
            lines += [f"host {name}: {exits.parent.name} exit codes {exit_codes(exits.parent)}" for exits in sorted(runs.glob("*/exits"))]
            tmux = subprocess.run(["tmux", "ls"], env={**os.environ, "TMUX_TMPDIR": str(self.tmux[name])}, capture_output=True,
                                  text=True)
            lines.append(f"host {name}: tmux ls: {(tmux.stdout + tmux.stderr).strip()}")
        if getattr(self, "moto_url", None):
            from tests.support.storage_check import client

            listed = client(self.moto_url).list_objects_v2(Bucket=self.bucket, Prefix="runs/").get("Contents", [])
            pointers = sorted(o["Key"].split("/")[1] for o in listed if o["Key"].endswith("/LATEST"))
            lines += [f"stored {run}: {self.latest(run)}" for run in pointers]
        return "\n".join(lines)

    def terminate(self, name):
        """Host `name` as a lost machine: its network gone, every process of it ended at once, its disk gone."""
        kill_sshd(self.sshd[name].proc.pid)
        self.sshd[name].stop()
        self.crash(name)  # SIGKILL: no process of it gets to write a last word (a `failed` status, a stored end)
        shutil.rmtree(self.root / f"host {name}")

    def crash(self, name):
        """Every process of host `name` killed at once with SIGKILL (a power loss: no signal handler runs, no exit record),
        then its tmux server; its disk and sshd stay, as after a reboot."""
        import signal

        from deploy.demo.localhost import processes_under

        root = self.root / f"host {name}"
        for _ in range(5):  # again: a process forked meanwhile
            for pid in processes_under(root):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        wait_until(lambda: not processes_under(root), 30, f"host {name}'s processes to end")
        self.kill_tmux(name)

    def kill_tmux(self, name):
        subprocess.run(["tmux", "kill-server"], env={**os.environ, "TMUX_TMPDIR": str(self.tmux[name])}, capture_output=True)

    def close(self):
        for name in self.sshd:
            self.kill_tmux(name)
        self.env.cleanup()
        for sshd in self.sshd.values():
            sshd.stop()


def seed_smoke_estimate(runs_dir):
    """The result a smoke test leaves on its host (deploy.host.checks), with its estimate of one training."""
    results = Path(runs_dir) / ".results"
    results.mkdir(parents=True)
    (results / "smoke-test.json").write_text(json.dumps({"ok": True, "exit_code": 0, "message": "smoke test passed",
                                                         "estimate": {"seconds": SMOKE_ESTIMATE_SECONDS}}))


def history_epochs(run_dir):
    lines = (Path(run_dir) / "history.csv").read_text().splitlines()[1:]
    return [int(line.split(",", 1)[0]) for line in lines]


def exit_codes(run_dir):
    """The exit codes of the run's launches on its host, oldest first."""
    records = [json.loads(p.read_text()) for p in (Path(run_dir) / "exits").glob("*.json")]
    return [r["exit_code"] for r in sorted(records, key=lambda r: r["ended_at"])]


def launches_overlapping(runs_dir):
    """Pairs of launches on one host whose trainings overlapped in time (from each exit record: its launch id begins with
    the launch's start, to the second; its ended_at): [] when the host trained one at a time."""
    from datetime import datetime, timezone

    spans = []
    for record in Path(runs_dir).glob("*/exits/*.json"):
        data = json.loads(record.read_text())
        start = datetime.strptime(record.stem.split("-")[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        spans.append((start, datetime.fromisoformat(data["ended_at"]), f"{record.parent.parent.name}/{record.stem}"))
    spans.sort()
    return [(a[2], b[2]) for a, b in zip(spans, spans[1:]) if b[0] < a[1]]


class LaunchedHost:
    """For `fab sweep --launch 1`: moto's EC2 (the `aws` fixture) launches the host, whose made-up address leads to a
    real sshd on 127.0.0.1 (the inventory's OpenSSH config), with run storage on moto's S3 and the stand-in trainer."""

    def __init__(self, tmp_path, venv, epochs, moto_url):
        from deploy.demo.localhost import LocalSSHHost
        from tests.support.deploy_env import DeployEnv
        from tests.support.helpers import TINY_CONFIG, write_config
        from tests.support.storage_check import new_bucket
        from trainer.data.synth import write_corpus

        self.root, self.tmux = tmp_path / "laptop", tmp_path / "tmux"
        self.root.mkdir(), self.tmux.mkdir()
        self.sshd = LocalSSHHost(tmp_path / "sshd", env={"TMUX_TMPDIR": self.tmux}).start()
        self.env = DeployEnv(self.root, self.sshd, venv)
        ssh_config = self.root / "ssh config"
        ssh_config.write_text(f"Host * !127.0.0.1\n    HostName 127.0.0.1\n    Port {self.sshd.port}\n")
        self.bucket, self.moto_url = new_bucket(moto_url), moto_url
        train = {**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "epochs": epochs}}
        self.env.write(hosts={}, ssh={"config_file": str(ssh_config)}, train_config=str(write_config(tmp_path / "train.yaml", **train)),
                       launch={"region": "us-east-1", "ssh_cidr": "198.51.100.7/32", "user": self.sshd.user,
                               "public_key_file": f"{self.sshd.key_file}.pub", "key_file": str(self.sshd.key_file), "ssh_wait_seconds": 60},
                       storage={"url": f"s3://{self.bucket}/runs", "endpoint_url": moto_url, "region": "us-east-1", "credentials": "laptop"},
                       recovery={"poll_seconds": 1})
        seed_smoke_estimate(self.env.runs)
        write_corpus(self.env.data, "crema-d", clips=60, seed=5)

    def close(self):
        subprocess.run(["tmux", "kill-server"], env={**os.environ, "TMUX_TMPDIR": str(self.tmux)}, capture_output=True)
        self.env.cleanup()
        self.sshd.stop()
