"""`fab watch` through real hosts: automatic recovery and recovery launches.

Real parts: `fab` as a user types it, real sshd hosts on 127.0.0.1 (one per "machine"), real tmux,
rsync and training (tiny), the real host agent, a local HTTP server recording the webhook posts.
"""

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.support.helpers import wait_until
from tests.support.random_faults import kill_sshd

pytestmark = [pytest.mark.ssh, pytest.mark.slow]


def status(env, run):
    try:
        return json.loads((env.runs / run / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def trainer_pid(env, run):
    """The trainer's pid (the python child of the launcher recorded in launch.json)."""
    launch = json.loads((env.runs / run / "launch.json").read_text())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            words = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[2]) == launch["pgid"] and b"-m" in words and b"trainer" in words:
            return int(entry.name)
    return None


@pytest.fixture
def watching():
    """`watching(env, *args)`: `fab watch ARGS` started in the background; ended with the test whatever happens."""
    started = []

    def start(env, *args):
        proc = env.popen("watch", *args)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_watch_follows_a_run_to_its_end_does_not_restart_one_that_failed_and_resumes_a_vanished_one_in_place(host_ready, webhook, watching):
    env = host_ready
    env.configure(epochs=2)
    env.write(notify={"webhook": webhook.url}, recovery={"poll_seconds": 0.5, "unreachable_minutes": 0.1})
    assert env.fab("train", "--run-name", "w1").returncode == 0
    proc = watching(env)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    assert "watching run w1 on local" in out and "finished on local; exit 0" in out, out
    wait_until(lambda: "finished" in webhook.events(), 20, "the finished notification")
    time.sleep(1.5)  # the agent's next rounds: nothing sent twice
    assert sorted(webhook.events()) == ["finished", "started"], webhook.posts
    finished = next(p for p in webhook.posts if p["event"] == "finished")
    assert finished["run"] == "w1" and finished["host"] == "local" and "UAR" in finished["text"], finished
    assert finished["text"].endswith("; the host stays up: autostop is off (`fab down` or `fab autostop` stops the billing)"), finished
    record = json.loads((env.root / "state" / "watch" / "w1.json").read_text())
    assert record["state"] == "finished" and record["restarts"] == 0
    assert [t["to"] for t in record["transitions"]][-1] == "finished"

    # a trainer killed by SIGKILL (exit 137: the OOM killer, or a person) is restarted in place from its last epoch once
    # (recovery.max_restarts_on_kill); a second kill is taken for the out-of-memory killer and ends the watch with 137
    env.configure(epochs=300)
    assert env.fab("train", "--run-name", "w2").returncode == 0
    proc = watching(env)
    wait_until(lambda: status(env, "w2").get("epoch", 0) >= 1, 180, "the first epoch")
    first = json.loads((env.runs / "w2" / "launch.json").read_text())["launch_id"]
    os.kill(trainer_pid(env, "w2"), signal.SIGKILL)
    wait_until(lambda: json.loads((env.runs / "w2" / "launch.json").read_text())["launch_id"] != first and trainer_pid(env, "w2"),
               180, "the trainer restarted")
    launched = (env.runs / "w2" / "launch.json").stat().st_mtime_ns  # killed again once the new trainer is past its start:
    wait_until(lambda: (env.runs / "w2" / "status.json").stat().st_mtime_ns > launched and status(env, "w2").get("state") == "running",
               180, "the restarted trainer's first epoch")
    os.kill(trainer_pid(env, "w2"), signal.SIGKILL)  # a kill before (train --resume says "ended at once") is no restart
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 137, out
    assert "restarting it from its last epoch (1 of at most 1: recovery.max_restarts_on_kill)" in out, out
    assert "restarted: run w2 on local from epoch" in out and "most likely the out-of-memory killer" in out, out
    wait_until(lambda: "failed" in webhook.events(), 20, "the failed notification")
    time.sleep(2)  # the agent's next rounds
    failed = [p for p in webhook.posts if p["event"] == "failed" and p["run"] == "w2"]
    # one a killed launch at most: the second kill's, and the first's when the host agent saw it before the restart
    assert 1 <= len(failed) <= 2 and all("out-of-memory" in p["text"] for p in failed), failed
    assert [p["text"] for p in webhook.posts if p["event"] == "recovered" and p["run"] == "w2"], webhook.posts  # the restart

    # the whole process group killed (as a reboot leaves it): vanished; no storage, but the host answers and holds
    # the run, so the watch continues it there (`train --resume`, the lost host is one of recovery.hosts)
    env.configure(epochs=6)
    env.write(recovery={"poll_seconds": 0.5, "unreachable_minutes": 0.1, "hosts": ["local"]})
    assert env.fab("train", "--run-name", "w3").returncode == 0
    proc = watching(env)
    wait_until(lambda: status(env, "w3").get("epoch", 0) >= 2, 180, "two epochs")
    os.killpg(json.loads((env.runs / "w3" / "launch.json").read_text())["pgid"], signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "lost: vanished on local" in out and "local: -H local train --resume" in out and "recovered: run w3 on local from epoch" in out, out
    history = history_epochs(env.runs / "w3")
    assert [e for e, _ in history] == list(range(6)), history
    recoveries = json.loads((env.runs / "w3" / "recoveries.json").read_text())["recoveries"]
    assert [(r["from_host"], r["host"], r["launched"]) for r in recoveries] == [("local", "local", False)], recoveries
    w3 = [p["event"] for p in webhook.posts if p["run"] == "w3"]
    assert sorted(w3) == ["finished", "preempted", "recovered", "started"], webhook.posts


# --- recovery: two "machines" (an sshd each, folders of their own), run storage on moto's S3 ---------

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
        from tests.support.storage_check import client

        try:
            return json.loads(client(self.moto_url).get_object(Bucket=self.bucket, Key=f"runs/{run}/LATEST")["Body"].read())
        except Exception:  # noqa: BLE001 - not there yet
            return None

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


@contextlib.contextmanager
def serve_metadata(handler):
    """The IMDSv2 stand-in (tests/journeys/test_pay_only_for_training.py MetadataService) on 127.0.0.1; its URL."""
    from http.server import ThreadingHTTPServer

    handler.notice = None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def history_epochs(run_dir):
    import csv

    with open(run_dir / "history.csv") as f:
        return [(int(row["epoch"]), float(row["val_uar"])) for row in csv.DictReader(f)]


def instances(region="us-east-1"):
    import boto3

    reservations = boto3.client("ec2", region_name=region).describe_instances()["Reservations"]
    return {tag["Value"]: i for r in reservations for i in r["Instances"] for tag in i.get("Tags", []) if tag["Key"] == "facenet-deploy"}


def test_a_terminated_host_s_run_is_resumed_on_a_launched_replacement_from_storage(aws, host_venv, tmp_path, webhook, watching):
    """Recovery end to end, with a recovery launch: host a (a launched spot instance) is terminated
    after epoch 3; it is the only host of recovery.hosts, so `fab watch` launches a replacement, resumes the run
    there from storage and terminates a (`fab down`)."""
    epochs = 12  # room for the kill after epoch 3 is stored, before the end, even when storage lags
    two = TwoHosts(tmp_path, host_venv, aws, webhook, epochs, launched=True)
    env = two.env
    try:
        address = two.launch_a()
        deploy = env.fab("-H", "a", "deploy-full", "--run-name", "e2e", timeout=600)
        assert deploy.returncode == 0, deploy.out
        watch = watching(env)
        wait_until(lambda: (two.latest("e2e") or {}).get("epoch", 0) >= 3, 240, "epoch 3 stored")
        two.terminate("a")
        out, _ = watch.communicate(timeout=900)
        assert watch.returncode == 0, out
        stored_epoch = int(out.split("recovered: run e2e on e2e-r1 from epoch ")[1].split()[0])
        assert stored_epoch >= 3, out
        assert "host a unreachable for" in out and "  a: does not answer" in out, out  # the listed host, tried first
        assert "no host of recovery.hosts is free: launching e2e-r1 (g5.xlarge, spot)" in out, out
        assert "-H e2e-r1 deploy-full --resume-from s3://" in out and "a terminated (fab down)" in out, out
        ec2 = instances()
        assert ec2["a"]["State"]["Name"] == "terminated" and ec2["e2e-r1"]["State"]["Name"] == "running", ec2
        assert ec2["e2e-r1"]["InstanceLifecycle"] == "spot" and ec2["e2e-r1"]["MetadataOptions"]["HttpTokens"] == "required"
        assert set(json.loads((two.root / "state" / "launched.json").read_text())["hosts"]) == {"e2e-r1"}

        run_dir = env.runs / "e2e"  # the replacement's (a's folders were deleted with it)
        history = history_epochs(run_dir)
        assert [e for e, _ in history] == list(range(epochs)), history  # every epoch once
        metrics = json.loads((run_dir / "metrics.json").read_text())
        best = max(history, key=lambda row: row[1])  # the first epoch with the best val_uar
        assert metrics["best_epoch"] == best[0] + 1, (metrics["best_epoch"], history)
        assert abs(metrics["validation"]["uar"] - best[1]) < 1e-6, (metrics["validation"], best)  # scored with best.keras
        recoveries = json.loads((run_dir / "recoveries.json").read_text())["recoveries"]
        assert [(r["from_host"], r["host"], r["from_epoch"], r["launched"]) for r in recoveries] == [("a", "e2e-r1", stored_epoch, True)]

        assert sorted(webhook.events()) == ["finished", "preempted", "recovered", "started"], webhook.posts
        lost = next(p for p in webhook.posts if p["event"] == "preempted")
        assert lost["host"] == "a" and "unreachable" in lost["text"], lost
        recovered = next(p for p in webhook.posts if p["event"] == "recovered")
        assert recovered["host"] == "e2e-r1" and recovered["details"]["epoch"] == stored_epoch, recovered

        monitor = env.fab("monitor")  # the last deploy-full's host: the replacement
        assert monitor.returncode == 0 and f"from epoch {stored_epoch} (was on a" in monitor.out, monitor.out
        env.env["COLUMNS"] = "250"  # the table on one line per run
        runs = env.fab("runs")  # storage only: host a is gone
        assert runs.returncode == 0 and "finished" in runs.out and f"a -> e2e-r1 at epoch {stored_epoch}" in runs.out, runs.out
        fetched = env.fab("-H", address, "fetch-results", "--run", "e2e", "--dest", two.root / "results")  # a's address: nobody answers
        assert fetched.returncode == 0 and "reading run e2e from storage instead" in fetched.out, fetched.out
        assert list((two.root / "results").glob("*/e2e/metrics.json")), fetched.out
    finally:
        two.close()


def test_a_spot_notice_stores_the_running_epoch_before_the_stop_ends_and_the_run_moves_on(aws, host_venv, tmp_path, webhook, watching):
    from tests.support.host_fakes import MetadataService

    epochs = 10
    two = TwoHosts(tmp_path, host_venv, aws, webhook, epochs)
    env = two.env
    with serve_metadata(MetadataService) as imds:
        try:
            env.write(ec2={"metadata_url": imds, "poll_seconds": 0.5, "spot_grace_seconds": 60})
            deploy = env.fab("-H", "a", "deploy-full", "--run-name", "spot", timeout=600)
            assert deploy.returncode == 0, deploy.out
            watch = watching(env)
            # the notice comes while the training is early on: gated on the host's own progress, not on the store's
            # (the uploader runs at nice 10: on a busy machine storage lags by several epochs, and a tiny run can end first)
            wait_until(lambda: (two.latest("spot") or {}).get("epoch", -1) >= 0
                       and ((read_json(two.runs("a") / "spot" / "status.json") or {}).get("epoch") or 0) >= 2, 240,
                       "epoch 2 trained and the run's first pointer stored")
            finished_at_notice = read_json(two.runs("a") / "spot" / "status.json")["epoch"]
            assert finished_at_notice < epochs - 2, finished_at_notice
            notice_time = time.time() + 120
            MetadataService.notice = {"action": "terminate", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(notice_time))}
            record = wait_until(lambda: read_json(two.runs("a") / "spot" / "exit.json"), 120, "the run to stop on the notice")
            MetadataService.notice = None  # host b asks the same stand-in
            assert record["preempted"] and record["exit_code"] == 3, record
            agent = wait_until(lambda: ((read_json(two.runs("a") / ".agent" / "state.json") or {}).get("preempted") or {}).get("stored"),
                               150, "the agent's stop to end")
            stopped_at = read_json(two.runs("a") / "spot" / "status.json")["epoch"]
            assert stopped_at > finished_at_notice, (stopped_at, finished_at_notice)  # the epoch running at the notice finished
            assert agent["epoch"] == stopped_at and agent["final"] is True, agent  # ... and was stored before the stop ended
            uploaded = json.loads((two.runs("a") / "spot" / "storage.json").read_text())["stored"]
            assert uploaded["at_epoch_seconds"] < notice_time - 5, uploaded  # within the notice's two minutes

            out, _ = watch.communicate(timeout=600)
            assert watch.returncode == 0, out
            assert f"recovered: run spot on b from epoch {stopped_at}" in out and "preempted on a (spot interruption notice" in out, out
            history = history_epochs(two.runs("b") / "spot")
            assert [e for e, _ in history] == list(range(epochs)), history
            assert sorted(webhook.events()) == ["finished", "preempted", "recovered", "started"], webhook.posts
            preempted = next(p for p in webhook.posts if p["event"] == "preempted")
            assert preempted["host"] == "a" and "spot interruption notice" in preempted["text"], preempted
        finally:
            two.close()
