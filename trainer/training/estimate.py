"""How long the full training would take here: the smoke test's run and the full config's own steps, timed on this machine.

    est = estimate(load_config("configs/full.yaml"), "runs/smoke/smoke-1")   # the smoke test's run dir
    est["seconds"], est["parts"]   # the trainer's time from its start to `finished`, and what it is made of

The smoke test (trainer/training/smoke.py) calls it after it passes. The estimate is of the time the trainer
runs (status.json's compute_seconds at the end, what metrics.json's compute record prices), in four parts:

    setup         the trainer's start to its first epoch (data, TensorFlow, model): the smoke run's own
    first_calls   the first call of each traced step (tracing, graph optimisation) and the first reading of
                  the clips: the full config's steps' first calls timed here, or what the smoke run's first
                  epoch's steps took beyond its last's if more (timed after the smoke run, the full config's
                  trace misses what a new trainer pays for its first trace); plus what the smoke run's first
                  epoch took besides its steps beyond its last (the first checkpoint and pictures)
    epochs        epochs x (training steps x seconds per step + validation steps x seconds per validation step
                  + the smoke run's last epoch's time besides its steps: checkpoints, backup, logs)
    end           the smoke run's end (the best model scored, pictures, metrics) + the full run's scoring steps
                  (validation and test clips) at the validation step's time

The steps are the training loop's own (trainer/training/steps.py) with the full config's model, batch size,
precision, device strategy and steps per call; the batches are random features of the length the
generator pads the data's clips to (its length buckets), since the values do not change what a step costs.
The counts come from the clips of the data (the smoke run's manifest) split as the full config splits them.
The epochs are train.epochs, an upper bound (early stopping may end sooner). A checkpoint of these models
takes a few hundredths of a second whatever their size, so the smoke run's time besides its steps stands
for the full run's.
"""

import json
import math
import time
from pathlib import Path

import numpy as np

from trainer.data.pipeline import subsample
from trainer.data.split import make_split
from trainer.data.validation import entries_from_manifest
from trainer.run_format import run_format


class _Batches:
    """A stand-in for the generator: `count` batches of `rows` random clips of `frames` frames."""

    def __init__(self, count, rows, frames, dim, classes, seed=0):
        rng = np.random.default_rng(seed)
        self.count, self.rows = count, rows
        self.x = rng.normal(size=(rows, frames, dim)).astype(np.float32)
        self.y = rng.integers(0, classes, rows).astype(np.int32)

    def __len__(self):
        return self.count

    def batch_rows(self, index):
        return self.rows

    def share(self, index, part, parts):
        rows = np.array_split(np.arange(self.rows), parts)[part]
        return self.x[rows], self.y[rows]


def data_shape(cfg, manifest, batch):
    """{"train", "val", "test": clips, "frames": the padded length of a training batch, on average} of the
    full config on the data of `manifest`, with global batch `batch`."""
    from trainer.data.generator import FixedVideoFacenetGenerator

    classes = cfg["data"]["classes"]
    entries = [e for e in entries_from_manifest(manifest) if e.emotion in classes]
    entries = subsample(entries, cfg["data"]["max_clips"], cfg["seed"])
    s = cfg["split"]
    split = make_split(entries, s["method"], s["val_fraction"], cfg["seed"], classes, test_fraction=s["test_fraction"])
    frames_of = {e.path: max(1, e.frames or 1) for e in entries}
    lengths = [frames_of[path] for path in split["train"]]
    gen = FixedVideoFacenetGenerator(split["train"], [0] * len(lengths), batch_size=batch, shuffle=True, lengths=lengths,
                                     max_frames=cfg["data"]["max_frames"], seed=cfg["seed"])
    frames = max(1, round(float(np.mean(gen.lengths)) / gen.padding_efficiency()))
    return {"train": len(split["train"]), "val": len(split["val"]), "test": len(split.get("test") or []), "frames": frames}


def call_lengths(batches, per_call):
    """The numbers of batches the loop's calls take over an epoch of `batches` (trainer/training/feeder.py):
    each is traced once. [K] or [K, the shorter last call]."""
    k = min(per_call, batches)
    return [k] + ([batches % k] if batches % k else [])


def combine(*, epochs, steps_per_epoch, val_steps_per_epoch, score_steps, seconds_per_step, seconds_per_eval_step,
            first_call_seconds, smoke_timing):
    """The estimate's arithmetic (module docstring): its parts and their sum, in seconds. `first_call_seconds`:
    the full config's first calls beyond their steps, timed here; `smoke_timing`: the smoke run's status.json `timing`."""
    first, last = smoke_timing["first_epoch"], smoke_timing["last_epoch"]
    epoch_other = last["other_seconds"]  # checkpoints, backup, logs: every epoch
    first_epoch_extra = max(0.0, first["other_seconds"] - epoch_other)  # its first save, its first pictures: once
    smoke_first_calls = first["steps_seconds"] - last["steps_seconds"]  # in a new trainer, as the full run's are
    epoch = steps_per_epoch * seconds_per_step + val_steps_per_epoch * seconds_per_eval_step + epoch_other
    parts = {
        "setup": smoke_timing["setup_seconds"],
        "first_calls": max(first_call_seconds, smoke_first_calls) + first_epoch_extra,
        "epochs": epochs * epoch,
        "end": smoke_timing["end_seconds"] + score_steps * seconds_per_eval_step,
    }
    return {"seconds_per_epoch": round(epoch, 2), "epoch_other_seconds": round(epoch_other, 3),
            "parts": {k: round(v, 2) for k, v in parts.items()}, "seconds": round(sum(parts.values()), 1)}


def compiled_steps(cfg, strategy, classes):
    """The run's model, compiled and its optimizer built under `strategy`, in its compiled steps (steps.py)."""
    from trainer.training.model import build_model, compile_model
    from trainer.training.steps import Steps

    with strategy.scope():
        model = compile_model(build_model(cfg["model"], classes, cfg["data"]["feature_dim"]), cfg["train"], classes)
        model.optimizer.build(model.trainable_variables)
    return Steps(model, strategy, classes, np.ones(classes, np.float32))


def time_calls(run, calls, steps, min_seconds):
    """(seconds per step, the first calls' extra seconds: tracing) of `run(count)`, which runs `count` steps in calls
    of the run's lengths `calls`: each call length the run will trace, traced and run once, then whole calls of K
    steps (traced already) for at least `steps` steps and `min_seconds`."""
    first = sum(run(n) for n in calls)
    each = calls[0] * math.ceil(steps / calls[0])
    timed, seconds = 0, 0.0
    while timed < steps or seconds < min_seconds:
        seconds += run(each)
        timed += each
    per_step = seconds / timed
    return per_step, max(0.0, first - sum(calls) * per_step)


def estimate(cfg, smoke_run, steps=4, min_seconds=0.5):
    """The full training's time on this machine (see the module docstring), as a dict for the smoke result.
    `smoke_run`: the smoke test's finished run dir (its manifest and status.json timing); each step is timed
    over at least `steps` steps and `min_seconds`."""
    import keras
    import tensorflow as tf

    from trainer.training import distribute
    from trainer.training.feeder import Feeder

    smoke_run = Path(smoke_run)
    smoke_timing = json.loads((smoke_run / run_format.STATUS).read_text())["timing"]
    strategy = distribute.choose_strategy(cfg["train"]["distribute"], None)
    replicas = strategy.num_replicas_in_sync
    batch = cfg["train"]["batch_size"] * replicas
    shape = data_shape(cfg, smoke_run / run_format.MANIFEST, batch)
    train_steps, val_steps = math.ceil(shape["train"] / batch), math.ceil(shape["val"] / batch)
    gpus = distribute.describe(strategy, cfg["train"]["batch_size"])["devices"]
    mixed = cfg["train"]["mixed_precision"] == "on" or (cfg["train"]["mixed_precision"] == "auto" and tf.config.list_physical_devices("GPU"))
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    try:
        classes = len(cfg["data"]["classes"])
        step = compiled_steps(cfg, strategy, classes)
        per_call = cfg["train"]["steps_per_execution"]
        feeder = Feeder(strategy, 1, per_call)
        seconds_per, first_calls = {}, 0.0
        for name, fn, batches in (("train", step.train, train_steps), ("evaluate", step.evaluate, val_steps)):
            def run(count, fn=fn):
                t0 = time.perf_counter()
                step.totals(feeder.run(_Batches(count, batch, shape["frames"], cfg["data"]["feature_dim"], classes), fn, step.zeros()))
                return time.perf_counter() - t0  # the wait for the device included

            seconds_per[name], first = time_calls(run, call_lengths(batches, per_call), steps, min_seconds)
            first_calls += first
        feeder.close()
    finally:
        keras.mixed_precision.set_global_policy(previous)
    score_steps = val_steps + math.ceil(shape["test"] / batch)  # the best model scored at the end
    return {
        "seconds_per_step": round(seconds_per["train"], 4), "seconds_per_eval_step": round(seconds_per["evaluate"], 4),
        "steps_per_epoch": train_steps, "val_steps_per_epoch": val_steps, "epochs": cfg["train"]["epochs"],
        "global_batch": batch, "replicas": replicas, "devices": gpus, "frames": shape["frames"], "train_clips": shape["train"],
        "mixed_precision": bool(mixed), "first_call_seconds": round(first_calls, 2),
        **combine(epochs=cfg["train"]["epochs"], steps_per_epoch=train_steps, val_steps_per_epoch=val_steps, score_steps=score_steps,
                  seconds_per_step=seconds_per["train"], seconds_per_eval_step=seconds_per["evaluate"],
                  first_call_seconds=first_calls, smoke_timing=smoke_timing),
    }
