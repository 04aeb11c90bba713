"""Run storage without a host: the inventory's storage keys, the consistent snapshot of a run directory
that a trainer is writing, the uploader as a real process against moto's S3 on 127.0.0.1, and the
host agent's spot path waiting for it."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from deploy.errors import InventoryError
from deploy.inventory import load_inventory
from tests.support.helpers import ROOT, wait_until
from tests.support.storage_check import check_pointers_came_last, client, new_bucket, pointers, refusing_unknown_keys
from trainer.storage import snapshot
from trainer.storage.layout import StorageUrlError, parse_url, split_run_url

sys.path.insert(0, str(ROOT / "remote_scripts"))
import run_state  # noqa: E402 - the host's run-file records, as launch_training.sh writes them


def inventory(tmp_path, **storage):
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump({"storage": storage}))
    return path


@pytest.mark.parametrize("storage, named", [
    ({"url": "https://bucket/x"}, "storage.url"),
    ({"url": "s3://Bad_Bucket/x"}, "storage.url"),
    ({"url": "s3://bucket/a//b"}, "storage.url"),
    ({"url": "s3://bucket/x", "endpoint_url": "minio:9000"}, "storage.endpoint_url"),
    ({"url": "s3://bucket/x", "credentials": "keys"}, "storage.credentials"),
    ({"endpoint_url": "http://127.0.0.1:9000"}, "storage.endpoint_url"),
    ({"url": "s3://bucket/x", "bucket": "y"}, "storage.bucket"),
    ({"url": "s3://bucket/x", "region": "us east 1"}, "storage.region"),
    ({"url": "s3://bucket/x", "region": "eu-west-1-"}, "storage.region"),
    ({"url": "s3://bucket/x", "region": 12}, "storage.region"),
])
def test_bad_storage_settings_are_refused_naming_the_key(tmp_path, storage, named):
    with pytest.raises(InventoryError, match=named.replace(".", r"\.")):
        load_inventory(inventory(tmp_path, **storage))


def test_storage_is_off_by_default_and_read_as_given(tmp_path):
    assert load_inventory(inventory(tmp_path)).storage["url"] is None
    inv = load_inventory(inventory(tmp_path, url="s3://my-bucket/team/runs/", endpoint_url="http://127.0.0.1:9000", region="eu-west-1"))
    assert inv.storage == {"url": "s3://my-bucket/team/runs/", "endpoint_url": "http://127.0.0.1:9000", "region": "eu-west-1",
                           "credentials": "host"}
    assert parse_url(inv.storage["url"]).run_prefix("r1") == "team/runs/r1/"
    assert split_run_url("s3://my-bucket/team/runs/r1") == (parse_url("s3://my-bucket/team/runs"), "r1")
    with pytest.raises(StorageUrlError):
        split_run_url("s3://my-bucket")


# --- the snapshot: one epoch's files, or none --------------------------------------------------

def write(path, text, mtime=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if isinstance(text, str) else json.dumps(text))
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def epoch_files(run, epoch, rows, t=1000.0, state="running"):
    """A run dir as the trainer leaves it at the end of `epoch`: best, backup (weights, metadata, callbacks), history, status."""
    write(run / "best.keras", "best", t)
    write(run / "backup" / "latest.weights.h5", f"weights {epoch}", t + 1)
    write(run / "backup" / "training_metadata.json", {"epoch": epoch, "batch": 0}, t + 2)
    write(run / "backup" / "callbacks.json", {"epoch": epoch}, t + 3)
    write(run / "history.csv", "epoch,loss\n" + "".join(f"{e},0.5\n" for e in range(rows)), t + 4)
    write(run / "status.json", {"epoch": epoch, "state": state, "started_at": "2026-11-30T10:00:00+00:00"}, t + 5)


def test_a_snapshot_is_one_epoch_and_cuts_the_rows_written_since(tmp_path):
    run = tmp_path / "r1"
    epoch_files(run, 2, rows=3)  # the next epoch's history row is already written
    for name in (".status.json.12.tmp", "storage.json", "storage.log", "backup/latest.weights.h5.bkp", "exits/x.pending"):
        write(run / name, "x")
    snap = snapshot.take(run)
    try:
        assert snap.epoch == 2
        assert snap.pieces["history.csv"].read_all().decode() == "epoch,loss\n0,0.5\n1,0.5\n"
        assert sorted(snap.pieces) == ["backup/callbacks.json", "backup/latest.weights.h5", "backup/training_metadata.json",
                                       "best.keras", "history.csv", "status.json"]
    finally:
        snap.close()
    final = snapshot.take(run, final=True)
    assert "backup/latest.weights.h5.bkp" in final.pieces  # a finished launch keeps the previous backup too
    final.close()


@pytest.mark.parametrize("tear", ["backup ahead of status", "weights newer than metadata", "best newer than metadata",
                                  "callbacks behind", "history short"])
def test_a_torn_epoch_end_gives_no_snapshot(tmp_path, tear):
    run = tmp_path / "r1"
    epoch_files(run, 2, rows=2)
    if tear == "backup ahead of status":
        write(run / "backup" / "training_metadata.json", {"epoch": 3}, 1002)
    elif tear == "weights newer than metadata":
        os.utime(run / "backup" / "latest.weights.h5", (1010, 1010))  # the next epoch's weights, its metadata not yet
    elif tear == "best newer than metadata":
        os.utime(run / "best.keras", (1010, 1010))
    elif tear == "callbacks behind":
        write(run / "backup" / "callbacks.json", {"epoch": 1}, 1003)
    else:
        write(run / "history.csv", "epoch,loss\n0,0.5\n", 1004)
    assert snapshot.take(run) is None
    snap = snapshot.take(run, final=True)  # once the trainer has ended, every file as it is
    assert snap is not None
    snap.close()


def test_a_cross_validation_is_stored_while_it_trains(tmp_path):
    run = tmp_path / "cv"
    write(run / "cv-plan.json", {"folds": 3, "data_dirs": []})
    write(run / "status.json", {"epoch": 4, "state": "running", "fold": 1, "folds": 3})
    write(run / "fold-1" / "backup" / "training_metadata.json", {"epoch": 4})
    snap = snapshot.take(run)
    assert snap is not None and "fold-1/backup/training_metadata.json" in snap.pieces
    snap.close()


# --- the uploader, a real process, against moto's S3 -----------------------------------------

def start_uploader(run, launch_id, url, moto_url, **settings):
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "FACENET_STORAGE": json.dumps({"url": url, "endpoint_url": moto_url, "host": "local", "poll_seconds": 0.1, **settings})}
    env.pop("AWS_ENDPOINT_URL", None)
    return subprocess.Popen([sys.executable, "-m", "trainer.storage.uploader", str(run), launch_id], cwd=ROOT, env=env,
                            stdout=open(run / "storage.log", "a"), stderr=subprocess.STDOUT)


def record(run):
    return json.loads((run / "storage.json").read_text())


def test_the_uploader_stores_each_epoch_pointer_last_and_the_end(tmp_path, moto_server):
    bucket = new_bucket(moto_server)
    run = tmp_path / "runs" / "r1"
    epoch_files(run, 0, rows=0, state="starting")
    (run / "backup").rename(run / "nobackup")  # epoch 0: nothing to resume from yet
    launch_id = run_state.record_launch(str(run), os.getpid(), "python -m trainer train (this test)")
    uploader = start_uploader(run, launch_id, f"s3://{bucket}/team", moto_server)
    try:
        wait_until(lambda: (record(run).get("stored") or {}).get("epoch") == 0 if (run / "storage.json").exists() else False, 30,
                   "epoch 0 stored")
        for epoch in (1, 2, 3):
            epoch_files(run, epoch, rows=epoch, t=1000.0 + 10 * epoch)
            wait_until(lambda e=epoch: (record(run).get("stored") or {}).get("epoch") == e, 30, f"epoch {epoch} stored")
        write(run / "metrics.json", {"test": {"uar": 0.5}})
        run_state.record_exit(str(run), 0, launch_id=launch_id)
        assert uploader.wait(60) == 0
    finally:
        uploader.kill()
    done = record(run)
    assert done["done"] and done["state"] == "final" and done["stored"]["final"] and done["failures"] is None
    history = check_pointers_came_last(bucket, "team/r1/")
    assert [e for e, _, _ in history] == sorted(e for e, _, _ in history) and {1, 2, 3} <= {e for e, _, _ in history}
    assert history[-1] == (3, "finished", True)
    s3 = client(moto_server)
    latest = json.loads(s3.get_object(Bucket=bucket, Key="team/r1/LATEST")["Body"].read())
    assert {"metrics.json", "backup/latest.weights.h5", f"exits/{launch_id}.json"} <= set(latest["files"])
    stored = s3.get_object(Bucket=bucket, Key="team/r1/" + latest["files"]["backup/latest.weights.h5"]["key"])["Body"].read()
    assert stored == b"weights 3"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="team/r1/checkpoints/")["Contents"]}
    named = {"team/r1/" + e["key"] for e in latest["files"].values()}
    assert named <= keys and len(keys - named) <= len(named)  # what no pointer names any more is deleted


@pytest.fixture
def refusing_storage(moto_server):
    """A bucket, and moto checking every request's credentials until the test ends."""
    bucket = new_bucket(moto_server)
    with refusing_unknown_keys(moto_server):
        yield bucket


def test_an_uploader_whose_writes_are_refused_says_why_and_gives_up_after_the_end(tmp_path, moto_server, refusing_storage):
    run = tmp_path / "runs" / "r1"
    epoch_files(run, 1, rows=1)
    launch_id = run_state.record_launch(str(run), os.getpid(), "python -m trainer train (this test)")
    uploader = start_uploader(run, launch_id, f"s3://{refusing_storage}/team", moto_server, final_retry_seconds=2)
    try:
        failing = wait_until(lambda: (run / "storage.json").exists() and (record(run).get("failures") or {}).get("count", 0) >= 2, 30,
                             "two failed uploads")
        assert failing
        assert record(run)["failures"]["code"] == "InvalidAccessKeyId", record(run)
        run_state.record_exit(str(run), 0, launch_id=launch_id)
        assert uploader.wait(60) == 1
    finally:
        uploader.kill()
    assert record(run)["state"] == "gave-up" and record(run)["done"] and record(run)["stored"] is None
    assert Path(run / "status.json").exists()  # the run itself untouched


FAKE_TRAINER = """
import json, os, signal, sys, time
sys.path.insert(0, sys.argv[2])
import run_state
run = sys.argv[1]
launch_id = run_state.record_launch(run, os.getpid(), "python -m trainer train (a stand-in)")
print(launch_id, flush=True)

def write(rel, data):
    path = os.path.join(run, rel)
    with open(path + ".tmp", "w") as f:
        f.write(data if isinstance(data, str) else json.dumps(data))
    os.replace(path + ".tmp", path)

def stop(signum, frame):  # as the trainer does: it finishes the running epoch (3), saves its backup, exits 3
    write("backup/latest.weights.h5", "weights 3")
    write("backup/training_metadata.json", {"epoch": 3, "batch": 0})
    write("backup/callbacks.json", {"epoch": 3})
    write("history.csv", "epoch,loss\\n0,0.5\\n1,0.5\\n2,0.5\\n")
    write("status.json", {"epoch": 3, "state": "stopped", "started_at": "2026-11-30T10:00:00+00:00"})
    run_state.record_exit(run, 3, launch_id=launch_id)
    sys.exit(3)

signal.signal(signal.SIGTERM, stop)
while True:
    time.sleep(0.1)
"""


def test_a_spot_notice_stores_the_running_epoch_before_the_agent_is_done(tmp_path, moto_server):
    import host_agent

    bucket = new_bucket(moto_server)
    runs = tmp_path / "runs"
    run = runs / "r1"
    epoch_files(run, 2, rows=2)
    trainer = subprocess.Popen([sys.executable, "-c", FAKE_TRAINER, str(run), str(ROOT / "remote_scripts")], stdout=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        launch_id = trainer.stdout.readline().strip()
        uploader = start_uploader(run, launch_id, f"s3://{bucket}/team", moto_server)
        wait_until(lambda: (run / "storage.json").exists() and (record(run).get("stored") or {}).get("epoch") == 2, 30, "epoch 2 stored")
        os.makedirs(host_agent.agent_dir(str(runs)), exist_ok=True)
        notice = {"action": "terminate", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 120))}
        stored = host_agent.preempt(str(runs), {"session": "no-such-session", "spot_grace_seconds": 30}, ("r1", str(run)), notice)
        returned = time.time()
        assert trainer.wait(10) == 3 and uploader.wait(10) == 0
    finally:
        trainer.kill()
    assert stored["epoch"] == 3 and stored["state"] == "preempted" and stored["final"], stored
    last_written, latest = pointers(bucket, "team/r1/")[-1]
    assert latest["epoch"] == 3 and latest["state"] == "preempted" and latest["final"]
    assert last_written.timestamp() < returned  # stored before the agent's stop was over
    weights = client(moto_server).get_object(Bucket=bucket, Key="team/r1/" + latest["files"]["backup/latest.weights.h5"]["key"])
    assert weights["Body"].read() == b"weights 3"
    assert "storage: stored the run end: epoch 3 (preempted)" in (runs / ".agent" / "agent.log").read_text()


def test_an_uploader_that_finds_a_later_launch_in_storage_fences_its_own_and_one_fenced_stands_down(tmp_path, moto_server):
    """Split brain: the run moved to another host while this one lived on. Its uploader finds the new launch's pointer,
    stops without writing over it and fences its launch (the trainer stops at its next epoch end, without a result)."""
    bucket = new_bucket(moto_server)
    run = tmp_path / "runs" / "r1"
    epoch_files(run, 1, rows=1)
    launch_id = run_state.record_launch(str(run), os.getpid(), "python -m trainer train (this test)")
    uploader = start_uploader(run, launch_id, f"s3://{bucket}/team", moto_server)
    try:
        wait_until(lambda: (run / "storage.json").exists() and (record(run).get("stored") or {}).get("epoch") == 1, 30, "epoch 1 stored")
        s3 = client(moto_server)
        latest = json.loads(s3.get_object(Bucket=bucket, Key="team/r1/LATEST")["Body"].read())
        later = "29991231T000000Z-7"  # the launch that took the run over on host b
        s3.put_object(Bucket=bucket, Key="team/r1/LATEST", Body=json.dumps({**latest, "launch_id": later, "host": "b", "epoch": 3}))
        epoch_files(run, 2, rows=2, t=1020.0)
        assert uploader.wait(60) == 3
    finally:
        uploader.kill()
    assert record(run)["state"] == "superseded" and later in record(run)["superseded"], record(run)
    fence = run_state.fenced(str(run), launch_id)
    assert fence and "this host's uploader found that" in fence["reason"] and later in fence["reason"], fence
    assert json.loads(s3.get_object(Bucket=bucket, Key="team/r1/LATEST")["Body"].read())["launch_id"] == later  # not written over

    # a launch fenced by `fab watch` (its host answered again): its uploader stands down at once, storing nothing more
    run2 = tmp_path / "runs" / "r2"
    epoch_files(run2, 1, rows=1)
    second = run_state.record_launch(str(run2), os.getpid(), "python -m trainer train (this test)")
    run_state.fence(str(run2), second, "run r2 moved to b (recovery 1)")
    uploader = start_uploader(run2, second, f"s3://{bucket}/team", moto_server)
    try:
        assert uploader.wait(60) == 3
    finally:
        uploader.kill()
    assert record(run2)["state"] == "superseded" and "moved to b" in record(run2)["superseded"]
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="team/r2/")


def test_the_host_agent_starts_a_dead_uploader_again_and_stops_after_its_limit(tmp_path, moto_server, monkeypatch):
    """An uploader that died (a kill, the OOM killer) froze storage at its epoch and nothing said so."""
    import host_agent

    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(key, value)  # the agent's own environment (on a host: its role, its ~/.aws) is the uploader's

    bucket = new_bucket(moto_server)
    runs = tmp_path / "runs"
    run = runs / "r1"
    epoch_files(run, 1, rows=1)
    (runs / ".current").write_text("r1\n")
    (runs / ".agent").mkdir()
    trainer = subprocess.Popen(["sleep", "300"], start_new_session=True)  # the launch's trainer, alive
    launch_id = run_state.record_launch(str(run), trainer.pid, "python -m trainer train (this test)")
    uploader = start_uploader(run, launch_id, f"s3://{bucket}/team", moto_server)
    revived = []
    try:
        wait_until(lambda: (run / "storage.json").exists() and (record(run).get("stored") or {}).get("epoch") == 1, 30, "epoch 1 stored")
        assert host_agent.revive_uploader(str(runs)) is None  # alive: nothing to do
        uploader.kill()
        uploader.wait()
        did = host_agent.revive_uploader(str(runs))
        assert did and did["restarts"] == 1 and did["launch_id"] == launch_id, did
        revived.append(did["pid"])
        epoch_files(run, 2, rows=2, t=1020.0)
        wait_until(lambda: (record(run).get("stored") or {}).get("epoch") == 2, 30, "epoch 2 stored by the revived uploader")
        assert record(run)["restarts"] == 1 and record(run)["pid"] == did["pid"]
        assert "started again as pid" in (runs / ".agent" / "agent.log").read_text()
        for _ in range(host_agent.MAX_UPLOADER_RESTARTS):  # one that dies every time is not started forever
            os.kill(record(run)["pid"] or revived[-1], 9)
            wait_until(lambda: not storage_alive(record(run).get("pid")), 10, "the uploader gone")
            data = record(run)
            data["updated_epoch_seconds"] = 0  # its "just started" grace over
            (run / "storage.json").write_text(json.dumps(data))
            did = host_agent.revive_uploader(str(runs))
            if did.get("pid"):
                revived.append(did["pid"])
                wait_until(lambda pid=did["pid"]: record(run).get("pid") == pid, 30, "the revived uploader's own record")
        assert "abandoned_at" in did and record(run)["state"] == "abandoned" and record(run)["done"], record(run)
        assert host_agent.revive_uploader(str(runs)) is None
    finally:
        trainer.kill()
        for pid in revived:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


def storage_alive(pid):
    import storage_state

    return storage_state.alive(pid)
