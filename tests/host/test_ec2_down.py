"""`fab down`: what counts as safe to delete with the host's disk, and a host whose instance is gone already.

Real parts: `fab` as a user types it; boto3 against moto's standalone server on 127.0.0.1 (EC2 and S3);
the launched instance's made-up address reaches a real sshd on 127.0.0.1 through the inventory's OpenSSH
config file; the host's run folder is seeded with the host's own record writer (remote_scripts/run_state.py
record-launch / record-exit), no training.
"""

import hashlib
import json
import subprocess
import sys

import pytest

from tests.support.aws import BUCKET, instances_in
from tests.support.helpers import ROOT

pytestmark = [pytest.mark.ssh]


def seed_run(runs, name, started_at):
    """A finished run folder as the host's launcher leaves it: config, status, launch record, exit record; its launch id."""
    run = runs / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("train: {epochs: 2}\n")
    (run / "status.json").write_text(json.dumps({"state": "finished", "epoch": 2, "epochs": 2, "started_at": started_at}))
    script = ROOT / "remote_scripts" / "run_state.py"
    launch = subprocess.run(["bash", "-c", f'"{sys.executable}" "{script}" record-launch "{run}" $$ train'],
                            capture_output=True, text=True, check=True, start_new_session=True).stdout.strip()  # its own group, gone
    subprocess.run([sys.executable, str(script), "record-exit", str(run), "0", launch], capture_output=True, check=True)
    return launch


def store_pointer(s3, run, started_at, launch_id, final=True):
    body = b"epoch,loss\n1,1.0\n"
    ck = "checkpoints/000002-20260101T000000000Z/"
    s3.put_object(Bucket=BUCKET, Key=f"team/{run}/{ck}history.csv", Body=body)
    pointer = {"format": 1, "run": run, "epoch": 2, "state": "finished", "final": final, "checkpoint": ck,
               "written_at": "2026-01-01T00:00:00+00:00", "host": "somewhere", "launch_id": launch_id, "run_started_at": started_at,
               "files": {"history.csv": {"key": ck + "history.csv", "size": len(body), "md5": hashlib.md5(body).hexdigest()}},
               "summary": {"epoch": 2, "epochs": 2}}
    s3.put_object(Bucket=BUCKET, Key=f"team/{run}/LATEST", Body=json.dumps(pointer).encode())


def test_down_counts_a_run_as_stored_only_when_storage_holds_that_very_run(launched_host):
    from deploy.runs import ledger

    env, s3 = launched_host
    started = "2026-11-30T04:00:00+00:00"
    launch = seed_run(env.runs, "exp", started)
    store_pointer(s3, "exp", "2020-01-01T00:00:00+00:00", "20200101T000000Z-7")  # another run of the same name, finished in 2020

    refused = env.fab("down", "gpu1")
    assert refused.returncode == 1 and "run exp on gpu1 was never fetched (storage holds another run of this name" in refused.out, refused.out
    assert instances_in()[0]["State"]["Name"] == "running"

    # the same run, but not its end (not final), or the end of an earlier launch of it: still at risk
    for started_at, launch_id, final in ((started, launch, False), (started, "20000101T000000Z-1", True)):
        store_pointer(s3, "exp", started_at, launch_id, final=final)
        assert env.fab("down", "gpu1").returncode == 1
    # its own launch's final pointer, or a later launch's of the same run (resumed elsewhere): stored
    assert ledger.stored_as({"final": True, "run_started_at": started, "launch_id": launch}, {"started_at": started, "launch_id": launch})
    assert ledger.stored_as({"final": True, "run_started_at": started, "launch_id": "29990101T000000Z-1"},
                            {"started_at": started, "launch_id": launch})
    assert not ledger.stored_as({"final": True, "run_started_at": None, "launch_id": "29990101T000000Z-1"},
                                {"started_at": started, "launch_id": launch})
    store_pointer(s3, "exp", started, launch)
    down = env.fab("down", "gpu1")
    assert down.returncode == 0 and "terminated gpu1" in down.out, down.out
    assert instances_in()[0]["State"]["Name"] == "terminated"


def test_a_running_run_is_at_risk_even_when_storage_holds_its_end(launched_host):
    env, s3 = launched_host
    started = "2026-11-30T04:00:00+00:00"
    launch = seed_run(env.runs, "live", started)
    store_pointer(s3, "live", started, launch)  # its end stored ... and yet it runs again (the same launch record, a live process)
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        script = ROOT / "remote_scripts" / "run_state.py"
        relaunch = subprocess.run([sys.executable, str(script), "record-launch", str(env.runs / "live"), str(sleeper.pid), "train"],
                                  capture_output=True, text=True, check=True).stdout.strip()
        (env.runs / "live" / "status.json").write_text(json.dumps({"state": "running", "epoch": 1, "epochs": 2, "started_at": started}))
        store_pointer(s3, "live", started, relaunch)  # a final pointer naming the very launch that runs
        refused = env.fab("down", "gpu1")
        assert refused.returncode == 1 and "run live on gpu1 is running now" in refused.out, refused.out
    finally:
        sleeper.kill()
        sleeper.wait()


def test_down_forgets_a_host_ec2_lists_as_terminated_without_asking_it(launched_host):
    import boto3

    env, _ = launched_host
    seed_run(env.runs, "lost", "2026-11-30T04:00:00+00:00")  # never fetched: a reachable host would be refused
    [instance] = instances_in()
    boto3.client("ec2", region_name="us-east-1").terminate_instances(InstanceIds=[instance["InstanceId"]])
    listed = env.fab("instances")
    assert "EC2 lists it as terminated or unknown: `fab down gpu1` forgets it" in listed.out, listed.out
    down = env.fab("down", "gpu1")
    assert down.returncode == 0, down.out
    assert "gpu1 (" + instance["InstanceId"] + "): EC2 lists it as terminated: its disk is gone" in down.out, down.out
    assert json.loads((env.root / "state" / "launched.json").read_text())["hosts"] == {}


def test_the_watch_downs_a_launched_host_whose_finished_run_is_stored_when_the_inventory_says_so(launched_host):
    env, s3 = launched_host
    started = "2026-11-30T04:00:00+00:00"
    launch = seed_run(env.runs, "exp", started)
    (env.runs / ".current").write_text("exp")
    env.write(recovery={"down_when_done": True, "poll_seconds": 1})
    kept = env.fab("-H", "gpu1", "watch", "--run", "exp", timeout=120)
    assert kept.returncode == 0 and "gpu1 kept: it holds run exp that was never fetched" in kept.out, kept.out
    assert instances_in()[0]["State"]["Name"] == "running"  # its end is neither stored nor fetched: the disk holds the only copy

    store_pointer(s3, "exp", started, launch)
    env.write(recovery={"down_when_done": False, "poll_seconds": 1})  # the default: the watch leaves the host to autostop
    left = env.fab("-H", "gpu1", "watch", "--run", "exp", timeout=120)
    assert left.returncode == 0 and "gpu1 terminated" not in left.out and instances_in()[0]["State"]["Name"] == "running", left.out

    env.write(recovery={"down_when_done": True, "poll_seconds": 1})
    downed = env.fab("-H", "gpu1", "watch", "--run", "exp", timeout=120)
    assert downed.returncode == 0 and "gpu1 terminated (fab down, recovery.down_when_done): its runs are stored or fetched" in downed.out, downed.out
    assert instances_in()[0]["State"]["Name"] == "terminated"
