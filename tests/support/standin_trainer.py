"""A stand-in for the trainer's TensorFlow part, for the tests that check only the process around a training.

    standin_ready.configure(3); standin_ready.fab("train")     # tests/support/standin_fixtures.py: a host whose trainer is this

Only for a test that checks the process (launch and exit records, signals, exit codes, locks, the host agent,
the budget cap, interrupts, tampered runs), never the training's content (epochs' numbers, weights, metrics):
those numbers are made up here. tests/host/test_standin_contract.py holds its run files and exit records to the real
trainer's; a change of the trainer's files shows there first.

The host's venv is the stand-in's (`standin_venv`): a `.pth` file there runs `install()` in a Python started as
`python -m trainer train ...` or `python -m trainer smoke ...` (the command line stays the real one: the host agent,
`fab stop` and the tests find the trainer as they find the real one). Every other Python of the venv (preflight,
the GPU probe, the uploader) is the real one. Once the synced `trainer` package is imported, these TensorFlow modules are replaced:

    trainer.data.generator    the clips' PyDataset: only their labels, in order (no feature file is read)
    trainer.training.model    a model of nothing; best.keras is a placeholder text
    trainer.training.loop     `fit`: each epoch sleeps `epoch_seconds` (the venv's standin.json), then writes what
                              the real callbacks write: history.csv's row, backup/, best.keras, status.json

and the TensorFlow functions `distribute.configure_devices`, `run._set_up`, `run._callbacks`, `evaluate.predict`,
`peers.lost_peer` and `peers.local_failure` (asked of any error of the set-up or the fit: a fenced launch's
Superseded, a full disk's OSError; never a lost peer with one worker) and `finish.draw` (no pictures;
`finish.NO_PICTURES`, train.log's line, says that the stand-in draws none); for the smoke test, `smoke.check_run`
(the history's losses finite and best.keras the stand-in's: no prediction) and `estimate.estimate` (the real one's keys
and arithmetic over made-up step times: no step is timed). Everything else runs for real: the run-dir
checks, the data preparation (split.json, manifest.json, normalization.npz), status.json (RunStatus), the stop at an
epoch end on SIGTERM/SIGINT/SIGHUP (exit 3, `run._fit`'s Stopped), the fence, the resume's checks, metrics.json's
assembly from scores of made-up predictions (finish_run), the exit codes (trainer.cli). Importing
tensorflow or keras fails loudly. No multi-worker cluster: `run._set_up` refuses one.
"""

import importlib.abc
import importlib.machinery
import json
import os
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

TF_MODULES = ("tensorflow", "keras", "tf_keras")
SETTINGS = "standin.json"  # in the venv: {"epoch_seconds": 1.0}
NOT_A_MODEL = "stand-in trainer (tests/support/standin_trainer.py): not a Keras model\n"
NO_PICTURES = "none drawn (the stand-in trainer draws none, whatever train.pictures says)"
BANNER = "stand-in trainer (tests/support/standin_trainer.py): no TensorFlow, {seconds:g} s per epoch, made-up numbers"


def epoch_seconds():
    try:
        return float(json.loads((Path(sys.prefix) / SETTINGS).read_text())["epoch_seconds"])
    except (OSError, ValueError, KeyError):
        return 1.0


# --- the TensorFlow modules replaced ------------------------------------------------------------

class Clips:
    """trainer.data.generator.FixedVideoFacenetGenerator's stand-in: the clips' labels in order, nothing read."""

    def __init__(self, paths, labels, batch_size=32, shuffle=False, **_):
        self.paths, self.labels, self.batch_size = list(paths), list(labels), batch_size
        self.order = list(range(len(self.paths)))

    def __len__(self):
        return max(1, -(-len(self.paths) // self.batch_size))

    def on_epoch_end(self):
        pass


class Model:
    """A model of nothing: `num_classes` for the made-up predictions."""

    def __init__(self, num_classes):
        self.num_classes = num_classes


def build_model(model_cfg, num_classes, feature_dim=512):
    return Model(num_classes)


def compile_model(model, train_cfg, num_classes):
    return model


def cudnn_problems(model):
    return []


def class_weights(labels, num_classes):
    """trainer/training/model.py's balanced weights (NumPy only there too)."""
    import numpy as np

    counts = np.bincount(labels, minlength=num_classes)
    return {c: float(len(labels) / (num_classes * n)) for c, n in enumerate(counts) if n}


def load_model(path):
    if Path(path).read_text() != NOT_A_MODEL:
        raise AssertionError(f"stand-in trainer: {path} is not the stand-in's best.keras")
    return Model(None)


class History:
    stopped_by_signal = False
    weights_sha256 = "0" * 64  # no weights


def made_up_logs(epoch):
    """The epoch's numbers: made up, val_uar rising so that best.keras moves."""
    return {"accuracy": 0.2 + 0.01 * epoch, "loss": 1.8 - 0.01 * epoch, "uar": 0.2 + 0.01 * epoch, "val_accuracy": 0.2 + 0.01 * epoch,
            "val_loss": 1.8 - 0.01 * epoch, "val_uar": 0.2 + 0.01 * epoch, "learning_rate": 0.001}


def fit(model, strategy, train_gen, val_gen, epochs, callbacks, class_weight=None, resume=None, stop=None, log=print, fence=None, **_):
    """trainer/training/loop.py's `fit`, its order kept: the fence asked before any file of the epoch is written, then
    the callbacks' files, the epoch's line, its timing, and a stop request honoured at the epoch's end."""
    from trainer.errors import Superseded

    files = next(c for c in callbacks if isinstance(c, RunFiles))
    history, seconds = History(), epoch_seconds()
    start = files.train_begin()
    for epoch in range(start, epochs):
        t0 = time.monotonic()
        files.epoch_begin(epoch)
        deadline = t0 + seconds
        while time.monotonic() < deadline:  # a signal's handler runs here (a second one raises KeyboardInterrupt)
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        logs = made_up_logs(epoch)
        line = f"Epoch {epoch + 1}/{epochs} - {time.monotonic() - t0:.0f}s - " + " - ".join(
            f"{k}: {v:.4f}" for k, v in logs.items() if k != "learning_rate")
        if fence is not None and fence() is not None:
            log(line)
            raise Superseded(f"{fence()}; epoch {epoch + 1} was not saved, and this launch writes no result (the run continues "
                             "under the launch that took it over)")
        files.epoch_end(epoch, logs, time.monotonic() - t0)
        log(line)
        files.status.epoch_timed(epoch, seconds, time.monotonic() - t0 - seconds)
        if stop is not None and stop.requested:
            history.stopped_by_signal = True
            break
    return history


def weights_digest(model):
    return History.weights_sha256


# --- the TensorFlow functions replaced in modules that stay ------------------------------------

class Strategy:
    num_replicas_in_sync = 1

    def scope(self):
        return nullcontext()


def set_up(cfg, run_dir, prepared, cluster, status, console, watch):
    """run._set_up's stand-in: one device, environment.json with the real one's keys."""
    import platform

    from trainer.training.environment import code_version
    from trainer.training.status import now_iso, write_json_atomic

    if cluster:
        raise RuntimeError("stand-in trainer: no multi-worker cluster (TF_CONFIG is set); use the real trainer")
    batch = cfg["train"]["batch_size"]
    distribution = {"strategy": "one device", "replicas": 1, "devices": ["default"], "batch_size_per_replica": batch,
                    "global_batch_size": batch}
    none = "none (stand-in trainer)"
    env = {"python": platform.python_version(), "tensorflow": none, "keras": none, "numpy": __import__("numpy").__version__,
           "platform": platform.platform(), "host": platform.node(), "cpus": os.cpu_count(), "gpus": [],
           "code_version": code_version(), "recorded_at": now_iso(), "distribution": distribution}
    write_json_atomic(run_dir / "environment.json", env)
    status.update(distribution=distribution)
    console.print(BANNER.format(seconds=epoch_seconds()), highlight=False)
    console.print(f"Device: CPU; precision float32; one device with 1 replica(s), global batch {batch}")
    return Strategy(), distribution, env


def callbacks(cfg, run_dir, chief, status, console):
    """run._callbacks' stand-in: (callbacks, resume state, stop) with the run's files written by RunFiles, and the
    real trainer's stop on a signal (GracefulStop is it as a Keras callback)."""
    from trainer.training.stop_request import StopRequest

    return [RunFiles(cfg, run_dir, status, console.print)], None, StopRequest()


def predict(model, gen):
    """evaluate.predict's stand-in: (y_true, y_pred), a third of the clips right."""
    import numpy as np

    y_true = np.asarray(gen.labels, dtype=int)[gen.order]
    classes = max(int(y_true.max(initial=0)) + 1, 2)
    right = np.arange(len(y_true)) % 3 == 0
    return y_true, np.where(right, y_true, (y_true + 1) % classes)


def lost_peer(error, workers):
    """peers.lost_peer's stand-in: whether `error` means that a peer is gone. Never: no TensorFlow error is raised here,
    and there is one worker (set_up refuses a cluster), so the error is raised as it is, as the real trainer does."""
    return False


def local_failure(error):
    """peers.local_failure's stand-in: no collective library (NCCL) here to fail."""
    return False


def draw(run_dir, metrics, step):
    """finish.draw's stand-in: no pictures (matplotlib and TensorBoard's images are the real trainer's)."""
    return {}


class RunFiles:
    """What the real callbacks write at each epoch's end, in their order: best.keras when the monitored value improved
    (a placeholder), history.csv's row (Keras' CSVLogger's columns), backup/ (RunBackup's three files and their .bkp),
    status.json (StatusCallback through the real RunStatus); logs/ is made, empty (TensorBoard's files are TF's)."""

    BACKUP = ("latest.weights.h5", "training_metadata.json", "callbacks.json")

    def __init__(self, cfg, run_dir, status, log):
        self.run_dir, self.status, self.log = Path(run_dir), status, log
        self.monitor = cfg["train"]["monitor"]
        self.mode = "min" if self.monitor.endswith("loss") else "max"
        self.history = self.run_dir / "history.csv"
        self.backup = self.run_dir / "backup"
        self.initial_epoch = None

    def train_begin(self):
        """The epoch the backup holds (0: none), history.csv's later rows removed, as RunBackup does on a resume."""
        from trainer.results.runfiles import open_log

        (self.run_dir / "logs").mkdir(exist_ok=True)
        open_log(self.history, "a").close()  # a link is refused before any epoch
        epoch = 0
        for suffix in ("", ".bkp"):
            try:
                epoch = int(json.loads((self.backup / f"training_metadata.json{suffix}").read_text())["epoch"])
                break
            except (OSError, ValueError, KeyError, TypeError):
                continue
        lines = self.history.read_text().splitlines(keepends=True)
        keep = lines[:1] + [row for row in lines[1:] if row.split(",", 1)[0].isdigit() and int(row.split(",", 1)[0]) < epoch]
        if keep != lines:
            self.history.write_text("".join(keep))
            self.log(f"history.csv: {len(lines) - len(keep)} row(s) past epoch {epoch} removed (they are trained again)")
        return epoch

    def epoch_begin(self, epoch):
        if self.initial_epoch is None:
            self.initial_epoch = epoch
            self.status.training_started()
            self.status.update(state="running", epoch=epoch)

    def epoch_end(self, epoch, logs, seconds):
        from trainer.results.runfiles import open_log
        from trainer.training.status import write_json_atomic

        best = (self.status.data.get("best") or {}).get("value")
        value = logs[self.monitor]
        if best is None or (value > best if self.mode == "max" else value < best):
            (self.run_dir / "best.keras").write_text(NOT_A_MODEL)
        columns = ["epoch", *sorted(logs)]
        with open_log(self.history, "a") as f:
            if not os.fstat(f.fileno()).st_size:
                f.write(",".join(columns) + "\n")
            f.write(",".join(str(v) for v in [epoch, *(logs[k] for k in sorted(logs))]) + "\n")
        self.backup.mkdir(exist_ok=True)
        for name in self.BACKUP:
            if (self.backup / name).exists():
                shutil.copyfile(self.backup / name, self.backup / f"{name}.bkp")
        done = epoch + 1
        best = value if best is None else (max if self.mode == "max" else min)(best, value)
        write_json_atomic(self.backup / "callbacks.json", {  # ResumeState.snapshot's shape
            "epoch": done, "checkpoint_best": best, "early_stopping": {"best": best, "wait": 0, "best_epoch": epoch},
            "reduce_lr": {"best": best, "wait": 0, "cooldown_counter": 0}})
        (self.backup / "latest.weights.h5").write_text(f"stand-in trainer: no weights (epoch {done})\n")
        write_json_atomic(self.backup / "training_metadata.json", {"epoch": done, "batch": 0})
        slowest = max(seconds, self.status.data.get("slowest_epoch_seconds") or 0)
        self.status.data.update(last_epoch_seconds=round(seconds, 3), slowest_epoch_seconds=slowest, last_epoch_train_seconds=round(seconds, 3))
        self.status.epoch_done(epoch, logs, self.monitor, self.mode, self.initial_epoch)


def check_run(run_dir, num_classes):
    """smoke.check_run's stand-in: its check of history.csv's losses, and best.keras the stand-in's (nothing to predict with)."""
    from trainer.training.smoke import check_losses

    check_losses(run_dir)
    load_model(Path(run_dir) / "best.keras")


def estimate(cfg, smoke_run, steps=4, min_seconds=0.5):
    """estimate.estimate's stand-in: the real one's keys and arithmetic (estimate.combine, from the smoke run's timing
    and shape), with made-up step times instead of the full config's steps timed under TensorFlow."""
    import math

    from trainer.training import estimate as real

    smoke_run = Path(smoke_run)
    timing = json.loads((smoke_run / "status.json").read_text())["timing"]
    batch = cfg["train"]["batch_size"]
    classes = cfg["data"]["classes"]  # data_shape's counts; its padded length needs the real generator: made up here
    entries = real.subsample([e for e in real.entries_from_manifest(smoke_run / "manifest.json") if e.emotion in classes],
                             cfg["data"]["max_clips"], cfg["seed"])
    split = real.make_split(entries, cfg["split"]["method"], cfg["split"]["val_fraction"], cfg["seed"], classes,
                            test_fraction=cfg["split"]["test_fraction"])
    shape = {"train": len(split["train"]), "val": len(split["val"]), "test": len(split.get("test") or []),
             "frames": cfg["data"]["max_frames"] or 100}
    train_steps, val_steps = math.ceil(shape["train"] / batch), math.ceil(shape["val"] / batch)
    per_step, per_eval_step, first_calls = 0.01, 0.005, 1.0
    return {
        "seconds_per_step": per_step, "seconds_per_eval_step": per_eval_step, "steps_per_epoch": train_steps,
        "val_steps_per_epoch": val_steps, "epochs": cfg["train"]["epochs"], "global_batch": batch, "replicas": 1,
        "devices": ["default"], "frames": shape["frames"], "train_clips": shape["train"], "mixed_precision": False,
        "first_call_seconds": first_calls,
        **real.combine(epochs=cfg["train"]["epochs"], steps_per_epoch=train_steps, val_steps_per_epoch=val_steps,
                       score_steps=val_steps + math.ceil(shape["test"] / batch), seconds_per_step=per_step,
                       seconds_per_eval_step=per_eval_step, first_call_seconds=first_calls, smoke_timing=timing),
    }


# --- the seam -------------------------------------------------------------------------------------

REPLACED = {
    "trainer.data.generator": {"FixedVideoFacenetGenerator": Clips},
    "trainer.training.model": {"build_model": build_model, "compile_model": compile_model, "cudnn_problems": cudnn_problems,
                               "class_weights": class_weights, "load_model": load_model},
    "trainer.training.loop": {"fit": fit, "weights_digest": weights_digest, "History": History},
}
PATCHED = {
    "trainer.training.run": {"_set_up": set_up, "_callbacks": callbacks},
    "trainer.training.distribute": {"configure_devices": lambda: None},
    "trainer.training.peers": {"lost_peer": lost_peer, "local_failure": local_failure},
    "trainer.results.evaluate": {"predict": predict},
    "trainer.training.finish": {"draw": draw, "NO_PICTURES": NO_PICTURES},
    "trainer.training.smoke": {"check_run": check_run},
    "trainer.training.estimate": {"estimate": estimate},
}


class _Replace(importlib.abc.Loader):
    def __init__(self, names):
        self.names = names

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__dict__.update(self.names, STANDIN=True)


class _Patch(importlib.abc.Loader):
    def __init__(self, real, names):
        self.real, self.names = real, names

    def create_module(self, spec):
        return self.real.create_module(spec)

    def exec_module(self, module):
        self.real.exec_module(module)
        for name in self.names:
            if not hasattr(module, name):  # the seam moved: say so, never train for real by accident
                raise AssertionError(f"stand-in trainer: {module.__name__} has no {name} any more; update tests/support/standin_trainer.py")
        module.__dict__.update(self.names, STANDIN=True)


class Seam(importlib.abc.MetaPathFinder):
    """Refuses TensorFlow and Keras, gives the stand-in's modules for REPLACED and patches PATCHED once loaded."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in TF_MODULES:
            raise ImportError(f"stand-in trainer (tests/support/standin_trainer.py): {name} was imported; the stand-in runs no "
                              "TensorFlow. Replace the module that imports it here (REPLACED or PATCHED), or use the real trainer.")
        if name in REPLACED:
            return importlib.machinery.ModuleSpec(name, _Replace(REPLACED[name]))
        if name in PATCHED:
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is not None:
                spec.loader = _Patch(spec.loader, PATCHED[name])
            return spec
        return None


def install():
    """Called by the stand-in venv's facenet-standin.pth in `python -m trainer train|smoke ...`, before the trainer is imported."""
    if any(name.split(".")[0] in TF_MODULES or name in REPLACED or name in PATCHED for name in sys.modules):
        raise AssertionError("stand-in trainer: installed after TensorFlow or the trainer was imported")
    sys.meta_path.insert(0, Seam())


COMMANDS = ("train", "smoke")  # `python -m trainer COMMAND` that the stand-in's venv runs without TensorFlow


def pth_line(path=__file__, commands=COMMANDS):
    """The .pth line that installs the stand-in in `python -m trainer COMMAND ...` for `commands` (and nowhere else)."""
    code = (f"if sys.orig_argv[1:3] == ['-m', 'trainer'] and sys.orig_argv[3:4] in {[[c] for c in commands]!r}:\n"
            " import importlib.util as u\n"
            f" s = u.spec_from_file_location('standin_trainer', {str(path)!r})\n"
            " m = u.module_from_spec(s); sys.modules['standin_trainer'] = m; s.loader.exec_module(m); m.install()\n")
    return f"import sys; exec({code!r})\n"
