"""How a worker learns that a peer is gone: the watchdog reset by every step, and the errors of a lost peer."""

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT

WATCHED = """
import sys, time
from trainer.training.peers import Watchdog
watch = Watchdog(2, sys.argv[1], "the workers did not all join")
for _ in range(8):   # 4 s of steps, each well within the 2 s
    time.sleep(0.5)
    watch.beat()
watch.expect("no step ended within 2 s")
watch.pause()        # 3 s of the chief's own work: no deadline
time.sleep(3)
watch.beat()
print("beaten", flush=True)
time.sleep(30)       # a step that never ends
print("not killed", flush=True)
"""


def test_the_watchdog_waits_while_steps_end_or_it_is_paused_and_kills_after_the_timeout(tmp_path):
    status = tmp_path / "status.json"
    status.write_text(json.dumps({"state": "running", "epoch": 3}))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", WATCHED, str(status)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert "beaten" in proc.stdout and "not killed" not in proc.stdout
    assert 9 < took < 20, took  # 4 s of steps + 3 s paused + the 2 s timeout (+ Python's start)
    recorded = json.loads(status.read_text())
    assert recorded["state"] == "failed" and recorded["epoch"] == 3
    assert recorded["error"] == {"type": "PeerLost", "message": "no step ended within 2 s", "cause": "timeout", "local": False}


@pytest.mark.tf
def test_nccl_errors_of_a_lost_peer_are_peer_lost_on_a_cluster_only():
    """On GPUs a lost peer raises NCCL's InternalError or UnknownError: with several workers that is a lost peer, not exit 1."""
    tf = pytest.importorskip("tensorflow")
    from trainer.training.peers import lost_peer

    nccl = tf.errors.InternalError(None, None, "NCCL failure: remote process exited or there was a network error")
    unknown = tf.errors.UnknownError(None, None, "ncclRemoteError: A call failed possibly due to a network error")
    assert lost_peer(nccl, workers=2) and lost_peer(unknown, workers=2)
    assert not lost_peer(nccl, workers=1) and not lost_peer(unknown, workers=1)  # one host: a failure of its own (exit 1)
    assert lost_peer(tf.errors.UnavailableError(None, None, "socket closed"), workers=2)
    assert not lost_peer(tf.errors.InvalidArgumentError(None, None, "bad shape"), workers=2)
    assert not lost_peer(ValueError("not TensorFlow's"), workers=2)


FIRST_CALL = """
import sys, time
from trainer.training.peers import Watchdog
watch = Watchdog(1, sys.argv[1], "no call of K training steps ended within 1 s", long_seconds=4)
watch.long_wait()   # a first call: 4 s, not 1 s
time.sleep(2.5)
watch.beat()
print("first call survived", flush=True)
watch.long_wait()
time.sleep(30)       # a peer frozen during a first call
print("not killed", flush=True)
"""


def test_a_first_call_gets_its_longer_allowance_and_a_frozen_peer_is_still_caught_within_it(tmp_path):
    status = tmp_path / "status.json"
    status.write_text(json.dumps({"state": "running"}))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", FIRST_CALL, str(status)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert "first call survived" in proc.stdout and "not killed" not in proc.stdout
    assert 6 < took < 15, took  # 2.5 s + the 4 s allowance (+ Python's start)
    assert json.loads(status.read_text())["error"]["type"] == "PeerLost"
