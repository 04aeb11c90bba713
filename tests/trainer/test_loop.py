"""The training loop on one device, on 2 logical CPU devices (MirroredStrategy) and on 2 loopback
workers (MultiWorkerMirroredStrategy): the cases of tests/support/loop_cases.py run in one process per device
configuration (a module fixture each: TensorFlow's start is most of a case's cost), and each test reads its cases."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support.cluster import Cluster, free_ports
from tests.support.helpers import ROOT

pytestmark = pytest.mark.slow
CASES = ROOT / "tests" / "support" / "loop_cases.py"
ONE_DEVICE = ("fit_equal", "regularizer", "dropout", "epoch_timing", "confusion_images", "slow_first_call")
TWO_REPLICAS = ("per_execution", "overflow", "dropout", "short_batch", "short_validation")
TWO_WORKERS = ("overflow", "slow_chief", "threads")


def run_cases(names, replicas=1, timeout=900):
    """The cases in one fresh process, one after the other: one device, or MirroredStrategy over `replicas` logical
    CPUs; {name: result}."""
    env = {**os.environ, "FACENET_LOGICAL_CPUS": str(replicas if replicas > 1 else 0)}
    env.pop("TF_CONFIG", None)
    proc = subprocess.run([sys.executable, str(CASES), *names], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_cases_on_workers(names, workers=2, timeout=900):
    """The cases on `workers` loopback workers (each a process with its TF_CONFIG, running them one after the
    other); each one's {name: result}."""
    addresses = [f"127.0.0.1:{p}" for p in free_ports(workers)]
    procs = []
    for k in range(workers):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": k}})}
        env.pop("FACENET_LOGICAL_CPUS", None)
        procs.append(subprocess.Popen([sys.executable, str(CASES), *names], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out[-2000:] + err[-4000:]
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]


@pytest.fixture(scope="module")
def one_device():
    return run_cases(ONE_DEVICE)


@pytest.fixture(scope="module")
def two_replicas():
    return run_cases(TWO_REPLICAS, replicas=2)


@pytest.fixture(scope="module")
def two_workers():
    return run_cases_on_workers(TWO_WORKERS)


def case(results, name):
    """One case's result from a group's run; a case that raised fails the test that reads it, with its traceback."""
    out = results[name]
    assert "case_error" not in out, out["case_error"]
    return out


def on_workers(results, name):
    return [case(worker, name) for worker in results]


def test_one_device_matches_model_fit_for_any_steps_per_execution_and_traces_once_per_shape_class(one_device):
    """Equal weights, bit for bit, after 6 steps with class weights, dropout and mixed_float16, whether
    the loop runs 1 or 3 steps per call; 21 padded lengths trace the training step once."""
    out = case(one_device, "fit_equal")
    assert out["equal_k1"] and out["equal_k3"], out
    assert out["loss_k1"] == pytest.approx(out["fit_loss"], rel=1e-6) and out["loss_k3"] == out["loss_k1"], out
    assert out["train_traces"] == 1, out  # traced for any batch size and length at once


def test_two_replicas_train_alike_for_any_steps_per_execution_and_get_their_batches_on_their_devices(two_replicas):
    out = case(two_replicas, "per_execution")
    assert out["digest_k1"] == out["digest_k2"], out
    assert out["share_devices"] == out["replica_devices"] and len(set(out["share_devices"])) == 2, out  # each share on its device


def test_weight_regularisers_count_in_the_loss_as_in_model_fit(one_device):
    """The loss includes model.losses (the regularisers), as `fit`'s does."""
    out = case(one_device, "regularizer")
    assert out["equal"], out
    assert out["loop_loss"] == pytest.approx(out["fit_loss"], rel=1e-6), out


def check_overflow_steps(results):
    """Each replica's overflow: skipped on every replica, weights finite, identical and unchanged, the scale halved."""
    for result in results:
        first, second = result["steps"]
        for step, scale in ((first, 16384.0), (second, 8192.0)):
            assert step["finite"] and step["replicas_identical"] and step["unchanged"], result
            assert step["iterations"] == 0 and set(step["scale"]) == {scale}, result
    assert len({r["steps"][1]["digest"] for r in results}) == 1, results


def test_mixed_precision_skips_an_overflowing_step_on_every_replica(two_replicas):
    """The loss scale optimizer decides from the all-reduced gradients: an overflow on one replica skips the step
    on every replica (their weights finite and identical, the scale halved on all)."""
    check_overflow_steps([case(two_replicas, "overflow")])


def test_mixed_precision_skips_an_overflowing_step_on_every_worker(two_workers):
    check_overflow_steps(on_workers(two_workers, "overflow"))


def test_one_all_reduce_per_training_step_and_none_while_evaluating(two_replicas):
    """The confusion counts stay on the replicas during the epoch: no all-reduce per step, no assert op in a step
    (the steps of 1 and of 2 per call)."""
    out = case(two_replicas, "per_execution")
    assert out["all_reduces_per_step"] == {"train": [1.0], "evaluate": [0.0]}, out
    assert out["assert_op_in_step"] == [False], out


def test_each_replica_draws_its_own_dropout_mask_reproducibly(one_device, two_replicas):
    """Each replica draws its own dropout mask (2 replicas given the same clip do not step as one device given it
    once), and the run stays reproducible."""
    one = case(one_device, "dropout")
    two = case(two_replicas, "dropout")
    assert one["digests"][0] == one["digests"][1] and two["digests"][0] == two["digests"][1], (one, two)
    assert two["digests"][0] != one["digests"][0], (one, two)


def test_a_short_last_batch_is_merged_so_no_replica_gets_zero_rows(two_replicas):
    """5 clips in global batches of 4 on 2 replicas: no replica gets an empty share, every clip is trained on."""
    out = case(two_replicas, "short_batch")
    assert out["shuffle_True"] == out["shuffle_False"] == "trained", out
    assert out["rows_shuffle_True"] == out["rows_shuffle_False"] == [5], out
    assert any("merged" in line and "1 clip" in line for line in out["log"]), out


def test_no_validation_clip_is_dropped_a_generator_that_cannot_merge_a_short_batch_is_an_error(two_replicas):
    """9 validation clips on 2 replicas (batch 4, K=3) are all scored, the short batch included; a generator that
    cannot merge a short batch (no require_rows) is an error, never 8 clips scored."""
    out = case(two_replicas, "short_validation")
    assert out["project"] == {"scored": [9]}, out
    error = out["plain"].get("error", "")
    assert "validation generator Batches" in error and "1 clip(s)" in error and "require_rows" in error, out


@pytest.fixture
def epoch_timing(one_device):
    return case(one_device, "epoch_timing")


def test_status_records_the_epochs_training_seconds_without_its_validation(epoch_timing):
    """status.json keeps the epoch's training seconds apart from its validation (bench/scaling.py divides the training
    samples by them)."""
    out = epoch_timing
    assert out["last_epoch_train_seconds"] is not None, out
    assert out["last_epoch_train_seconds"] + 2.5 < out["last_epoch_seconds"], out  # 2 validation batches of 1.5 s left out


def test_status_records_each_epochs_steps_apart_from_its_callbacks_for_the_estimate(epoch_timing):
    """The smoke test's timing, which the estimate of the full training scales (trainer/training/estimate.py)."""
    out = epoch_timing
    timing = out["timing"]
    assert [timing["first_epoch"]["epoch"], timing["last_epoch"]["epoch"]] == [1, 2], out
    for epoch in (timing["first_epoch"], timing["last_epoch"]):
        assert epoch["steps_seconds"] >= 3.0, out  # its 2 validation batches of 1.5 s are steps
        assert 1.0 <= epoch["other_seconds"] < epoch["steps_seconds"], out  # the 1 s save is not
    assert timing["setup_seconds"] >= 0 and timing["end_seconds"] >= 0, out


def test_validation_pictures_come_from_the_epochs_own_evaluation(one_device):
    """ConfusionImages draws from the loop's validation confusion: it reads the validation clips no more than the loop."""
    out = case(one_device, "confusion_images")
    assert out["val_reads"] == out["epochs"] * out["val_batches"], out
    assert out["image_files"] >= 1, out
    # a training that fails (here a non-finite loss in epoch 5) still draws the best epoch it had not drawn yet
    assert out["failed"] and out["best_epochs"][-1] == 4 and out["drawn_after_failure"] == [1, 4], out


def test_a_first_call_longer_than_the_collective_timeout_is_not_a_lost_peer(one_device):
    """The first call of a newly traced function (graph optimisation + first run, which grow with
    steps_per_execution) gets the long allowance, not collective_timeout: a healthy worker survives it."""
    out = case(one_device, "slow_first_call")
    assert out["survived"] and out["slept"], out


def test_a_worker_waits_out_the_chiefs_slow_epoch_end_within_the_long_allowance(two_workers):
    """A worker waiting for the chief's epoch end at the epoch's agreement gets the long allowance (the chief
    pauses only its own watchdog): it survives a chief slower than the timeout."""
    results = on_workers(two_workers, "slow_chief")
    assert all(r["survived"] for r in results), results


def test_threads_stay_bounded_over_200_steps_on_two_workers(two_workers):
    """No thread per collective: the one watchdog replaces TensorFlow's per-collective timeout, whose threads sleep it out
    (200 steps: 200 threads with one each)."""
    results = on_workers(two_workers, "threads")
    for r in results:
        assert r["threads_after"] - r["threads_before"] < 50, results
        assert r["train_traces"] == 2, results  # once per fit call: a worker's sums keep their type from call to call


def test_a_stalled_worker_is_waited_for_and_a_frozen_one_fails_the_run_within_the_collective_timeout(tmp_path, synth_crema):
    """A peer stopped with SIGSTOP for 15 s, less than train.collective_timeout (30 s) but more than TensorFlow's
    own default heartbeat timeout (10 s, which ended both workers: AbortedError, DeadlineExceededError), is waited
    for; stopped for good, the other worker records PeerLost and ends within train.collective_timeout."""
    cluster = Cluster(tmp_path)
    try:
        cluster.start("--data", synth_crema, "--epochs", 200, "--set", "train.collective_timeout=30")
        cluster.wait_for_epoch(1, timeout=300)  # its steps are traced: the rest of the run is steps
        os.kill(cluster.procs[1].pid, signal.SIGSTOP)  # a stall: swapping, a busy disk, a paused VM
        time.sleep(15)
        os.kill(cluster.procs[1].pid, signal.SIGCONT)
        stalled_at = cluster.status(0)["epoch"]
        cluster.wait_for_epoch(stalled_at + 2, timeout=120)  # both go on
        os.kill(cluster.procs[1].pid, signal.SIGSTOP)
        frozen = time.monotonic()
        cluster.procs[0].wait(timeout=120)
        assert time.monotonic() - frozen < 90, "the live worker waited too long"
        st = cluster.status(0)
        assert st["state"] == "failed" and st["error"]["type"] == "PeerLost", st
    finally:
        cluster.kill()
