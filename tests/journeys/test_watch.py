"""`fab watch` through real hosts: automatic recovery and recovery launches.

Real parts: `fab` as a user types it, real sshd hosts on 127.0.0.1 (one per "machine"), real tmux,
rsync, the real host agent and uploader, a local HTTP server recording the webhook posts. Both tests
check the process around a training (states, exit records, restarts, which epochs were trained where), not what it
learnt: their trainer is the stand-in (tests/support/standin_fixtures.py, held to the real one by
tests/host/test_standin_contract.py).
"""

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.support.helpers import read_status, wait_until
from tests.support.two_hosts import TwoHosts, history_epochs, read_json

pytestmark = [pytest.mark.ssh, pytest.mark.slow]


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


def test_watch_follows_a_run_to_its_end_does_not_restart_one_that_failed_and_resumes_a_vanished_one_in_place(standin_ready, webhook, watching):
    env = standin_ready
    env.configure(epochs=4)
    # the host agent says "started" when a round of it sees the run before its first epoch's end: the stand-in's first
    # epoch takes a second, so the agent's rounds come every half second (5 s by default)
    env.write(notify={"webhook": webhook.url}, recovery={"poll_seconds": 0.5, "unreachable_minutes": 0.1},
              ec2={**env.inventory["ec2"], "poll_seconds": 0.5})
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
    wait_until(lambda: read_status(env.runs / "w2").get("epoch", 0) >= 1, 180, "the first epoch")
    first = json.loads((env.runs / "w2" / "launch.json").read_text())["launch_id"]
    os.kill(trainer_pid(env, "w2"), signal.SIGKILL)
    wait_until(lambda: json.loads((env.runs / "w2" / "launch.json").read_text())["launch_id"] != first and trainer_pid(env, "w2"),
               180, "the trainer restarted")
    launched = (env.runs / "w2" / "launch.json").stat().st_mtime_ns  # killed again once the new trainer is past its start
    # and the watch's `train --resume` has seen it start (it says "recovered"): a kill before that ("ended at once") is no restart
    wait_until(lambda: (env.runs / "w2" / "status.json").stat().st_mtime_ns > launched and read_status(env.runs / "w2").get("state") == "running"
               and any(p["event"] == "recovered" and p["run"] == "w2" for p in webhook.posts), 180, "the restart to be confirmed")
    os.kill(trainer_pid(env, "w2"), signal.SIGKILL)
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
    wait_until(lambda: read_status(env.runs / "w3").get("epoch", 0) >= 2, 180, "two epochs")
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


# --- recovery: two "machines" (tests/support/two_hosts.py), run storage on moto's S3; the recovery on a launched
# replacement is tests/journeys/test_storage_deploy.py's scenario ---------

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


def test_a_spot_notice_stores_the_running_epoch_before_the_stop_ends_and_the_run_moves_on(aws, standin_venv, tmp_path, webhook, watching):
    from tests.support.host_fakes import MetadataService

    epochs = 10
    two = TwoHosts(tmp_path, standin_venv, aws, webhook, epochs)
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
