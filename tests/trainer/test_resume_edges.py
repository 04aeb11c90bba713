"""Resuming a run in the moments that break it: a finished run, a torn or inconsistent backup, a
non-finite loss. Real trainer processes, real signals, real files (tiny configs)."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.support.fixtures_runs import copy_trained_run, status
from tests.support.helpers import run_trainer
from tests.support.warm_runner import start_trainer

pytestmark = pytest.mark.slow


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def digests(run, names):
    return {name: digest(run / name) for name in names if (run / name).is_file()}


def copy_run(stopped_run, tmp_path, name):
    run = tmp_path / name
    shutil.copytree(stopped_run, run)
    return run


def first_epoch_trained(stdout):
    return int(next(line for line in stdout.splitlines() if line.startswith("Epoch ")).split()[1].split("/")[0])


def test_the_backup_is_stamped_with_its_epoch_and_keeps_the_previous_one(stopped_run):
    done = status(stopped_run)["epoch"]
    backup = stopped_run / "backup"
    for suffix, epoch in (("", done), (".bkp", done - 1)):
        with h5py.File(backup / f"latest.weights.h5{suffix}", "r") as f:
            assert int(f.attrs["epoch"]) == epoch
        assert json.loads((backup / f"training_metadata.json{suffix}").read_text())["epoch"] == epoch
        assert json.loads((backup / f"callbacks.json{suffix}").read_text())["epoch"] == epoch
    assert not list(backup.glob(".*"))  # no temp file left behind


def test_resuming_a_finished_run_is_refused_and_rewrites_nothing(tmp_path, trained_run):
    run = copy_trained_run(trained_run, tmp_path, "done")
    names = ["history.csv", "best.keras", "metrics.json", "status.json", "config.yaml", "train.log", "split.json"]
    before = digests(run, names)
    again = run_trainer("train", "--resume", run)
    assert again.returncode == 2, again.stdout + again.stderr
    assert "run done is finished; start a new run" in again.stderr and "Traceback" not in again.stderr
    assert digests(run, names) == before

    # a cross-validation whose folds all finished: the same
    cv = tmp_path / "cv"
    for k in (1, 2):
        (cv / f"fold-{k}").mkdir(parents=True)
        (cv / f"fold-{k}" / "metrics.json").write_text("{}")
    (cv / "cv-plan.json").write_text(json.dumps({"folds": 2, "test_actors": [["1001"], ["1002"]], "seed": 0, "data_dirs": []}))
    (cv / "config.yaml").write_text("seed: 0\n")
    again = run_trainer("train", "--resume", cv)
    assert again.returncode == 2 and "run cv is finished; start a new run" in again.stderr, again.stdout + again.stderr
    assert not (cv / "cv.json").exists() and not (cv / "status.json").exists()


def test_an_empty_training_metadata_falls_back_to_the_previous_backup_and_says_so(stopped_run, tmp_path):
    run = copy_run(stopped_run, tmp_path, "empty-meta")
    done = status(run)["epoch"]
    (run / "backup" / "training_metadata.json").write_text("")  # Keras writes it in place, without fsync: a crash empties it
    proc = run_trainer("train", "--resume", run, "--epochs", done + 1)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "the latest backup training_metadata.json is empty" in proc.stdout
    assert f"Resuming from the previous backup instead: epoch {done - 1}" in proc.stdout
    assert first_epoch_trained(proc.stdout) == done  # epoch `done` (1-based) is trained again
    epochs = [int(line.split(",")[0]) for line in (run / "history.csv").read_text().splitlines()[1:]]
    assert epochs == list(range(done + 1))  # each epoch once
    assert status(run)["state"] == "finished"


def test_a_resume_state_ahead_of_its_weights_is_not_used(stopped_run, tmp_path):
    """A kill after the next epoch's callbacks.json is written, before its weights: the latest set disagrees on the
    epoch and is not used; the previous one is."""
    run = copy_run(stopped_run, tmp_path, "ahead")
    done = status(run)["epoch"]
    path = run / "backup" / "callbacks.json"
    ahead = {**json.loads(path.read_text()), "epoch": done + 1, "checkpoint_best": 0.99}
    path.write_text(json.dumps(ahead))
    proc = run_trainer("train", "--resume", run, "--epochs", done + 1)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"callbacks.json is of epoch {done + 1}, its weights of epoch {done}" in proc.stdout
    assert f"Resuming from the previous backup instead: epoch {done - 1}" in proc.stdout
    assert first_epoch_trained(proc.stdout) == done


def test_a_torn_backup_with_no_previous_one_fails_with_a_clear_message(stopped_run, tmp_path):
    run = copy_run(stopped_run, tmp_path, "no-previous")
    for old in (run / "backup").glob("*.bkp"):
        old.unlink()
    (run / "backup" / "training_metadata.json").write_text("")
    proc = run_trainer("train", "--resume", run)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"Cannot resume from {run / 'backup'}: the latest backup training_metadata.json is empty" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and "JSONDecodeError" not in proc.stdout + proc.stderr
    assert status(run)["state"] == "failed" and status(run)["error"]["type"] == "ResumeError"


def test_a_backup_whose_metadata_files_are_gone_is_refused_not_restarted_from_zero(stopped_run, tmp_path):
    """Only the first backup cut before its metadata (no .bkp set yet) reads as "no epoch backed up": a run with epochs
    backed up whose metadata files went missing is refused (exit 2), its history kept, never trained again from 0."""
    run = copy_run(stopped_run, tmp_path, "no-metadata")
    rows = (run / "history.csv").read_text()
    for path in (run / "backup").glob("training_metadata.json*"):
        path.unlink()
    proc = run_trainer("train", "--resume", run)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"Cannot resume from {run / 'backup'}" in proc.stderr and "holds no epoch" in proc.stderr, proc.stderr
    assert (run / "history.csv").read_text() == rows


def test_a_crash_exits_1_with_traceback_in_train_log_and_failed_status(stopped_run, tmp_path):
    """A clip file cut short after validation (a disk error mid-run): the resumed run crashes, exit 1, with the
    traceback in train.log and status.json failed."""
    run = copy_run(stopped_run, tmp_path, "crash")
    data = tmp_path / "crash data" / "crema-d"  # the run's data, copied: `--resume --data` maps the run to it
    shutil.copytree(Path(json.loads((run / "manifest.json").read_text())["dirs"][0]), data)
    victim = data / Path(json.loads((run / "split.json").read_text())["train"][0]).name
    with open(victim, "r+b") as f:
        f.truncate(200)
    proc = run_trainer("train", "--resume", run, "--data", data)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    st = status(run)
    assert st["state"] == "failed" and st["error"]["type"], st
    assert "Traceback" in (run / "train.log").read_text()


def test_a_clip_holding_inf_is_refused_when_read_before_any_epoch_of_it_is_saved(stopped_run, tmp_path):
    """A clip that holds inf after validation (a file changed on disk) is refused when the generator reads it,
    on any CPU (some kernels turn NaN into 0, so the loss may stay finite). The run ends failed (exit 2, the
    file named), and its backup, best model and history are those of the last epoch before."""
    run = copy_run(stopped_run, tmp_path, "nan")
    done = status(run)["epoch"]
    data = tmp_path / "nan data" / "crema-d"  # the run's data, copied: `--resume --data` maps the run to it
    shutil.copytree(Path(json.loads((run / "manifest.json").read_text())["dirs"][0]), data)
    victim = data / Path(json.loads((run / "split.json").read_text())["train"][0]).name
    good = victim.read_bytes()
    with np.load(victim) as npz:
        arrays = {key: npz[key] for key in npz.files}
    arrays["video_features"] = np.full_like(arrays["video_features"], np.inf)
    np.savez(victim, **arrays)
    saved = ["best.keras", "history.csv", *(f"backup/{p.name}" for p in (run / "backup").iterdir())]
    before = digests(run, saved)

    proc = run_trainer("train", "--resume", run, "--data", data, "--epochs", done + 5)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert digests(run, saved) == before  # no callback saw the NaN epoch
    assert f"{victim}: 'video_features' holds" in proc.stderr and "NaN/inf value(s)" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    st = status(run)
    assert st["state"] == "failed" and st["error"]["type"] == "NonFiniteData" and st["epoch"] == done

    victim.write_bytes(good)  # the data repaired: the run continues from its last finite epoch
    proc = run_trainer("train", "--resume", run, "--epochs", done + 1)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert first_epoch_trained(proc.stdout) == done + 1
    assert status(run)["state"] == "finished"


def test_a_fenced_launch_stops_at_its_next_epoch_end_without_a_result(tmp_path, synth_crema):
    """Exactly one trainer per run: once RUN/fenced.json names this launch (the run moved to another host), its trainer
    stops at its next epoch end (exit 5) before any callback saves that epoch, and writes no result."""
    import sys
    import time

    from tests.support.helpers import ROOT, TINY_CONFIG, wait_until, write_config

    sys.path.insert(0, str(ROOT / "remote_scripts"))
    import run_state

    cfg = write_config(tmp_path / "long.yaml", **{**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "epochs": 300}})
    launch_id = "20261206T120000Z-4242"
    proc = start_trainer(["train", "--config", cfg, "--data", synth_crema, "--out", tmp_path / "runs", "--run-name", "f1"], cwd=ROOT,
                         env={**os.environ, "FACENET_LAUNCH_ID": launch_id})
    run = tmp_path / "runs" / "f1"
    try:
        wait_until(lambda: status(run).get("epoch", 0) >= 2 if (run / "status.json").exists() else False, 240, "two epochs")
        run_state.fence(str(run), "20261206T110000Z-1", "another launch's fence")  # not this launch's: it goes on
        time.sleep(0.1)
        fenced_at = status(run)["epoch"]
        run_state.fence(str(run), launch_id, "run f1 moved to b (recovery 1)")
        out, _ = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 5, out
    assert f"launch {launch_id} was fenced at" in out and "run f1 moved to b" in out and "writes no result" in out, out
    st = status(run)
    assert st["epoch"] <= fenced_at + 1 and st["error"]["type"] == "Superseded", st
    rows = (run / "history.csv").read_text().strip().splitlines()[1:]
    assert len(rows) == st["epoch"], rows  # the epoch it stopped at was never saved
    assert not (run / "metrics.json").exists() and "Traceback" not in out


def test_history_holds_every_epoch_once_whatever_moment_of_the_epoch_end_a_kill_hits(tmp_path, synth_crema):
    """An epoch's history row is written before its backup, so no kill leaves the history without a backed-up epoch;
    a kill between the row and the backup must not leave that row twice. Kills land right after a new row and right
    after a new backup, then the run is resumed to its end, from its backup (not from zero)."""
    import signal
    import time

    from tests.support.helpers import ROOT, TINY_CONFIG, write_config

    epochs = 8
    cfg = write_config(tmp_path / "c.yaml", **{**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "epochs": epochs}})
    run = tmp_path / "runs" / "k1"
    history, backup = run / "history.csv", run / "backup" / "training_metadata.json"

    def rows():
        try:
            return len(history.read_text().splitlines())
        except OSError:
            return 0

    def stamp():
        try:
            return backup.stat().st_mtime_ns
        except OSError:
            return None

    first = ["train", "--config", cfg, "--data", synth_crema, "--out", tmp_path / "runs", "--run-name", "k1"]
    for watched in ("row", "backup", "row", "backup"):
        args = first if not run.exists() else ["train", "--resume", run]
        proc = start_trainer(args, cwd=ROOT)
        before = rows() if watched == "row" else stamp()
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            now = rows() if watched == "row" else stamp()
            if now != before and (watched != "row" or now > 1):
                os.kill(proc.pid, signal.SIGKILL)  # right after the row (or the backup) of an epoch, before the other
                break
            time.sleep(0.001)
        proc.communicate()
        assert status(run)["state"] == "running"  # killed: nobody wrote an end state
    backed_up = json.loads(backup.read_text())["epoch"]
    done = run_trainer("train", "--resume", run, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    first_epoch = next(line for line in done.stdout.splitlines() if line.startswith("Epoch "))
    assert int(first_epoch.split()[1].split("/")[0]) == backed_up + 1  # from its backup, not from zero (Keras counts from 1)
    assert status(run)["state"] == "finished" and status(run)["epoch"] == epochs
    epochs_in_history = [int(line.split(",", 1)[0]) for line in history.read_text().splitlines()[1:]]
    assert epochs_in_history == list(range(epochs)), epochs_in_history
