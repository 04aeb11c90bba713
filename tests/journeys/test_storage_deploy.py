"""Runs outlive their hosts: run storage end to end, with `fab` against real sshd hosts, real tmux
and rsync, and moto's S3 on 127.0.0.1 as the store (inventory storage.endpoint_url).

One set-up for the module: host a trains run r1 with storage on (credentials: laptop, moto's test
keys); once epoch 2 is stored, host a is "terminated" (every process under its folders killed at
once, its runs folder deleted, its sshd stopped). Then, with host a still gone: `fab runs`, `fab fetch-results
--run r1` (from storage, and it says so), and `fab -H b deploy-full --resume-from s3://.../r1`,
which continues the run on host b from the stored epoch to its end. The tests only read what that
left, except the last, which trains a second run on host b against a store that refuses its keys.
"""

import csv
import json
import os
import shutil
import signal
import subprocess

import pytest

from deploy.demo.localhost import LocalSSHHost, processes_under
from tests.support.deploy_env import DeployEnv
from tests.support.helpers import TINY_CONFIG, wait_until, write_config
from tests.support.storage_check import check_pointers_came_last, client, new_bucket, refusing_unknown_keys

pytestmark = [pytest.mark.ssh, pytest.mark.slow]
EPOCHS = 30  # room to stop host a after its second stored epoch, before the end, even when storage lags (a busy machine: 12 was
# not enough once, the uploader storing its first epoch as the trainer ended)


def storage_record(runs, run):
    try:
        return json.loads((runs / run / "storage.json").read_text())
    except (OSError, ValueError):
        return {}


def screen(out):
    """The monitor's text without its panel borders, whitespace collapsed (rich wraps long lines)."""
    return " ".join(out.replace("│", " ").split())


@pytest.fixture(scope="module")
def stored(tmp_path_factory, host_venv, moto_server):
    from trainer.data.synth import write_corpus

    root = tmp_path_factory.mktemp("storage") / "facenet deploy"
    root.mkdir()
    sshd = tmp_path_factory.mktemp("sshd")  # sshd_config takes no spaces in its paths
    host_a, host_b = LocalSSHHost(sshd / "a").start(), LocalSSHHost(sshd / "b").start()
    env = DeployEnv(root, host_a, host_venv)
    try:
        bucket = new_bucket(moto_server)
        write_corpus(env.data, "crema-d", clips=60, seed=9)
        config = write_config(root / "tiny.yaml", **{**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "epochs": EPOCHS}})

        def paths(name):
            return {"project_dir": str(root / name / "project dir"), "data_dir": str(root / name / "data dir"),
                    "runs_dir": str(root / name / "runs dir")}

        env.write(hosts={"a": {**host_a.host_entry(), "remote": paths("host a")}, "b": {**host_b.host_entry(), "remote": paths("host b")}},
                  default_host="a", train_config=str(config),
                  storage={"url": f"s3://{bucket}/team", "endpoint_url": moto_server, "credentials": "laptop"})
        for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
            env.env.pop(key, None)
        env.env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                       AWS_CONFIG_FILE=str(root / "no aws config"), AWS_SHARED_CREDENTIALS_FILE=str(root / "no aws credentials"),
                       AWS_EC2_METADATA_DISABLED="true")
        runs_a, runs_b = root / "host a" / "runs dir", root / "host b" / "runs dir"

        for task in ("sync-code", "sync-data"):  # host a: code and data (its venv is the suite's); deploy-full is host b's
            assert env.fab("-H", "a", task).returncode == 0, task
        started = env.fab("-H", "a", "train", "--run-name", "r1")
        assert started.returncode == 0, started.out
        assert "storage: s3://" in started.out and "this machine's AWS credentials" in started.out
        wait_until(lambda: (storage_record(runs_a, "r1").get("stored") or {}).get("epoch", 0) >= 2, 300, "epoch 2 stored from host a")
        # host a is terminated: every process under its folders at once (SIGKILL: no graceful stop, no last upload),
        # its runs folder, its sshd
        for pid in processes_under(root / "host a"):
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["tmux", "kill-session", "-t", "=" + env.inventory["tmux_session"]], capture_output=True)
        host_a.stop()
        shutil.rmtree(runs_a)
        s3 = client(moto_server)
        at_loss = json.loads(s3.get_object(Bucket=bucket, Key="team/r1/LATEST")["Body"].read())
        assert at_loss["host"] == "a" and at_loss["state"] == "running" and 2 <= at_loss["epoch"] < EPOCHS, at_loss

        runs = env.fab("runs")
        fetched = env.fab("-H", "a", "fetch-results", "--run", "r1", "--dest", root / "results")
        resumed = env.fab("-H", "b", "deploy-full", "--resume-from", f"s3://{bucket}/team/r1", timeout=600)
        assert resumed.returncode == 0, resumed.out
        wait_until(lambda: storage_record(runs_b, "r1").get("done"), 300, "run r1 finished on host b and its end stored")
        yield {"env": env, "bucket": bucket, "s3": s3, "root": root, "runs_b": runs_b, "at_loss": at_loss, "runs": runs,
               "fetched": fetched, "resumed": resumed, "moto": moto_server}
    finally:
        env.cleanup()
        host_a.stop()
        host_b.stop()


def test_fab_runs_lists_the_run_from_storage_with_its_host_gone(stored):
    runs = stored["runs"]
    assert runs.returncode == 0, runs.out
    text = screen(runs.out)
    epoch = stored["at_loss"]["epoch"]
    assert f"Runs in s3://{stored['bucket']}/team" in text
    assert "r1" in text and " a " in text and "running" in text and f"{epoch}/{EPOCHS}" in text, runs.out
    assert "val_uar" in text  # the best validation so far


def test_fetch_results_reads_the_run_from_storage_when_the_host_is_unreachable(stored):
    fetched = stored["fetched"]
    assert fetched.returncode == 0, fetched.out
    assert "The host cannot be reached" in fetched.out and "reading run r1 from storage instead" in fetched.out
    assert f"from storage s3://{stored['bucket']}/team/r1" in fetched.out
    local = stored["root"] / "results" / "a" / "r1"
    status = json.loads((local / "status.json").read_text())
    assert status["epoch"] == stored["at_loss"]["epoch"]
    assert (local / "best.keras").is_file() and (local / "config.yaml").is_file() and not (local / "backup").exists()


def test_deploy_full_resumes_the_stored_run_on_another_host_every_epoch_once(stored):
    resumed, runs_b, epoch = stored["resumed"], stored["runs_b"], stored["at_loss"]["epoch"]
    assert f"from storage s3://{stored['bucket']}/team/r1 (epoch {epoch}, running" in resumed.out
    assert "upload-run" in resumed.out and "Training resumed: run r1" in resumed.out
    with open(runs_b / "r1" / "history.csv") as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert epochs == list(range(EPOCHS)), epochs  # each epoch once: those of host a, then those of host b
    status = json.loads((runs_b / "r1" / "status.json").read_text())
    assert status["state"] == "finished" and status["epoch"] == EPOCHS
    log = (runs_b / "r1" / "train.log").read_text()
    assert f"Epoch {epoch + 1}/{EPOCHS}" in log.split("(resumed)")[-1] and f"Epoch {epoch}/{EPOCHS}" not in log.split("(resumed)")[-1]


def test_every_stored_pointer_came_after_the_files_it_names_and_the_end_is_stored(stored):
    history = check_pointers_came_last(stored["bucket"], "team/r1/")
    epochs = [e for e, _, _ in history]
    # an epoch that ends while the previous one uploads is stored with the next (tiny epochs here: a second or two),
    # so which epochs between the first and the loss were stored depends on the machine's speed
    assert epochs == sorted(epochs) and {0, stored["at_loss"]["epoch"], EPOCHS} <= set(epochs), history
    assert history[-1] == (EPOCHS, "finished", True)
    latest = json.loads(stored["s3"].get_object(Bucket=stored["bucket"], Key="team/r1/LATEST")["Body"].read())
    assert latest["host"] == "b" and latest["summary"]["metrics"]["split"] == "test"
    monitor = stored["env"].fab("-H", "b", "monitor")
    assert monitor.returncode == 0, monitor.out
    assert f"stored: epoch {EPOCHS}," in screen(monitor.out) and "(finished, final)" in screen(monitor.out), monitor.out
    runs = stored["env"].fab("runs", "--state", "finished")
    assert "r1" in runs.out and "finished" in runs.out and f"{EPOCHS}/{EPOCHS}" in runs.out, runs.out


def test_a_storage_that_refuses_writes_shows_on_the_monitor_and_the_training_finishes(stored):
    env, runs_b = stored["env"], stored["runs_b"]
    env.write(train_config=str(write_config(stored["root"] / "two epochs.yaml", **{**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "epochs": 2}})))
    key = env.env["AWS_ACCESS_KEY_ID"]
    env.env["AWS_ACCESS_KEY_ID"] = "AKIANOSUCHKEY0000000"  # sent to the host (credentials: laptop); the store knows no such key
    try:
        with refusing_unknown_keys(stored["moto"]):
            started = env.fab("-H", "b", "train", "--run-name", "r2")
            assert started.returncode == 0, started.out

            def failing_on_the_monitor():
                out = env.fab("-H", "b", "monitor").out
                return out if "uploads failing: InvalidAccessKeyId" in screen(out) else None

            shown = wait_until(failing_on_the_monitor, 120, "the monitor showing the refused uploads")
            assert "storage:" in screen(shown)
            wait_until(lambda: (runs_b / "r2" / "exit.json").exists(), 300, "run r2 to end")
            monitor = env.fab("-H", "b", "monitor")
    finally:
        env.env["AWS_ACCESS_KEY_ID"] = key
    assert monitor.returncode == 0 and "FINISHED" in monitor.out, monitor.out
    assert json.loads((runs_b / "r2" / "status.json").read_text())["state"] == "finished"
    record = storage_record(runs_b, "r2")
    assert record["failures"]["code"] == "InvalidAccessKeyId" and record["stored"] is None, record
