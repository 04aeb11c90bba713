"""Several workers as one training (MultiWorkerMirroredStrategy): real processes on 127.0.0.1,
each with its own TF_CONFIG and its own runs dir, as two hosts have. A worker killed mid-run (PeerLost, the resume
from the chief's backup) is tests/journeys/test_cluster_deploy.py's, through `fab` on two sshd hosts."""

import json
import os
import signal
import time

import pytest

from tests.support.cluster import TINY, Cluster
from tests.support.helpers import ROOT, run_trainer
from trainer.data.synth import write_corpus
from trainer.errors import ConfigError
from trainer.training.distribute import read_cluster

pytestmark = pytest.mark.slow


CHIEF_ONLY = ("best.keras", "backup", "logs", "history.csv", "metrics.json", "confusion_matrix.png")


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.kill()


def epochs_of(run_dir):
    return [int(line.split(",")[0]) for line in (run_dir / "history.csv").read_text().splitlines()[1:]]


def test_two_workers_train_as_one_and_match_two_mirrored_devices(cluster, tmp_path, synth_crema):
    """Same results semantics: two workers of one device each train exactly as two mirrored devices
    of one host on the same global batch; only the chief writes the run's shared files."""
    cluster.start("--data", synth_crema, "--epochs", 4, "--set", "train.pictures=true")  # the chief's alone
    codes, outs = cluster.wait()
    assert codes == [0, 0], outs
    chief, worker = cluster.run_dir(0), cluster.run_dir(1)
    for name in ("best.keras", "history.csv", "metrics.json", "confusion_matrix.png", "status.json", "environment.json"):
        assert (chief / name).exists(), name
    assert not (chief / "backup").exists()  # finished
    assert not [name for name in CHIEF_ONLY if (worker / name).exists()]
    st0, st1 = cluster.status(0), cluster.status(1)
    assert st0["state"] == st1["state"] == "finished" and st0["epoch"] == st1["epoch"] == 4
    assert st0["weights_sha256"] == st1["weights_sha256"]  # identical weights on both workers, bit for bit
    expected = {"strategy": "MultiWorkerMirroredStrategy", "replicas": 2, "global_batch_size": 32, "workers": cluster.addresses}
    assert expected.items() <= st0["distribution"].items()
    assert st0["distribution"]["chief"] is True and st1["distribution"]["worker"] == 1
    assert "worker 1 of 2, global batch 32" in outs[1] and "the chief writes the model" in outs[1]

    proc = run_trainer("train", "--data", synth_crema, "--out", tmp_path, "--run-name", "mirrored", "--epochs", "4",
                       "--set", "train.distribute=mirrored", *TINY, env={"FACENET_LOGICAL_CPUS": "2"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    mirrored = json.loads((tmp_path / "mirrored" / "status.json").read_text())
    assert mirrored["distribution"]["global_batch_size"] == 32
    for key in ("loss", "val_loss", "val_uar"):
        assert mirrored["last"][key] == pytest.approx(st0["last"][key], rel=1e-4), key


def test_a_stop_request_to_one_worker_stops_every_worker_after_the_same_epoch(cluster, synth_crema):
    cluster.start("--data", synth_crema, "--epochs", 200)
    cluster.wait_for_epoch(2)
    cluster.procs[0].send_signal(signal.SIGTERM)
    codes, outs = cluster.wait(timeout=120)
    assert codes == [3, 3], outs
    assert cluster.status(0)["epoch"] == cluster.status(1)["epoch"]
    assert cluster.status(1)["state"] == "stopped"


def test_workers_with_different_data_refuse_to_train(cluster, tmp_path, synth_crema):
    other = tmp_path / "other"
    write_corpus(other, "crema-d", clips=150, seed=5)
    cluster.start("--epochs", 2, data=[synth_crema, other])
    codes, outs = cluster.wait()
    assert codes == [2, 2], outs
    assert "this worker's data differs from the chief's" in outs[1] and "another worker's data differs" in outs[0]


def test_tf_config_is_checked_and_multi_worker_needs_it(tmp_path, synth_crema):
    assert read_cluster({}) is None
    good = {"cluster": {"worker": ["10.0.0.1:23456", "10.0.0.2:23456"]}, "task": {"type": "worker", "index": 1}}
    assert read_cluster({"TF_CONFIG": json.dumps(good)}) == {"workers": good["cluster"]["worker"], "index": 1}
    for bad, says in (("{not json", "not a cluster description"),
                      (json.dumps({**good, "task": {"type": "worker", "index": 2}}), "task.index must be 0..1"),
                      (json.dumps({"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker", "index": 0}}), "only workers"),
                      (json.dumps({"cluster": {"worker": ["nohost"]}, "task": {"type": "worker", "index": 0}}), "host:port")):
        with pytest.raises(ConfigError, match=says):
            read_cluster({"TF_CONFIG": bad})
    proc = run_trainer("train", "--data", synth_crema, "--out", tmp_path, "--epochs", "1", "--set", "train.distribute=multi_worker", *TINY)
    assert proc.returncode == 2 and "TF_CONFIG is not set" in proc.stderr


def test_a_worker_whose_peers_never_start_fails_within_the_collective_timeout(cluster, synth_crema):
    """TensorFlow waits for the other workers inside C++ (GIL held, SIGTERM taken over): the trainer's
    watchdog process records the failure (PeerLost) and kills it, instead of a run that waits forever."""
    env = cluster.env(0)
    started = time.monotonic()
    proc = run_trainer("train", "--data", synth_crema, "--out", cluster.root / "w0", "--run-name", "run", "--epochs", "2", *TINY,
                       "--set", "train.collective_timeout=5", env=env, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert time.monotonic() - started < 60 and "did not all join" in proc.stdout
    st = cluster.status(0)
    assert st["state"] == "failed" and st["error"]["type"] == "PeerLost" and "did not all join" in st["error"]["message"]


def test_a_chief_slow_to_set_up_is_waited_for_within_the_long_allowance(cluster, tmp_path, synth_crema):
    """The set-up after the join (each worker loads its data, as slow as its own disk; the model's
    variables wait for the chief's) is the peers' own work: the other worker waits for it within the
    long allowance, not train.collective_timeout (it was killed as PeerLost: "no call ... ended")."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import json, os, time\n"
        "if json.loads(os.environ['TF_CONFIG'])['task']['index'] == 0:\n"
        "    from trainer.data import pipeline\n"
        "    load = pipeline.generators\n"
        "    def slow_load(*args, **kwargs):\n"
        "        time.sleep(12)  # the chief's data on a slow disk\n"
        "        return load(*args, **kwargs)\n"
        "    pipeline.generators = slow_load\n")
    path = os.pathsep.join(filter(None, [str(hooks), str(ROOT), os.environ.get("PYTHONPATH")]))
    cluster.start("--data", synth_crema, "--epochs", 1, "--set", "train.collective_timeout=4", env={"PYTHONPATH": path})
    codes, outs = cluster.wait()
    if codes != [0, 0]:
        pytest.fail(cluster.report())
    assert cluster.status(0)["state"] == cluster.status(1)["state"] == "finished"


def test_a_worker_killed_before_its_first_step_stops_the_chief_within_the_heartbeat(cluster, synth_crema):
    """Killed after the join, during the set-up, no collective of the chief fails at once: TensorFlow's heartbeat
    finds it, within min(train.collective_timeout, 30 s) (300 s here: the chief waited 300 s)."""
    cluster.start("--data", synth_crema, "--epochs", 200)
    out = ""
    for line in cluster.procs[1].stdout:  # the worker has joined: it describes its strategy
        out += line
        if "worker 1 of 2" in line:
            break
    assert "worker 1 of 2" in out, cluster.report()
    cluster.procs[1].kill()
    killed = time.monotonic()
    cluster.procs[0].wait(timeout=120)
    assert time.monotonic() - killed < 60, cluster.report()
    st = cluster.status(0)
    assert cluster.procs[0].returncode == 4 and st["state"] == "failed" and st["error"]["type"] == "PeerLost", cluster.report()
