"""How long the full training would take here: its own training step, timed on this machine.

    est = estimate(load_config("configs/full.yaml"), "runs/smoke/smoke-1/manifest.json")
    est["seconds_per_step"], est["steps_per_epoch"], est["epochs"], est["seconds"]

The smoke test (trainer/training/smoke.py) calls it after it passes. The model, batch size, precision and
device strategy are the full config's, and the step is the training loop's own (trainer/training/loop.py);
the batches are random features of the data's mean clip length (capped at data.max_frames),
since the values do not change what a step costs. The first steps (tracing, kernel autotuning)
are not counted. The steps per epoch come from the clips the data holds (the manifest) and the
split fractions; the epochs are train.epochs, an upper bound (early stopping may end sooner).
"""

import math
import time

import numpy as np

from trainer.data.pipeline import subsample
from trainer.data.validation import entries_from_manifest


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


def data_shape(cfg, manifest):
    """(training clips, validation clips, frames per clip) of the full config on the data of `manifest`."""
    classes = set(cfg["data"]["classes"])
    entries = [e for e in entries_from_manifest(manifest) if e.emotion in classes]
    entries = subsample(entries, cfg["data"]["max_clips"], cfg["seed"])
    cap = cfg["data"]["max_frames"] or None
    lengths = [min(e.frames or 0, cap) if cap else (e.frames or 0) for e in entries]
    frames = max(1, round(sum(lengths) / len(lengths))) if lengths else (cap or 300)
    val, test = cfg["split"]["val_fraction"], cfg["split"]["test_fraction"]
    n = len(entries)
    return max(1, round(n * (1 - val - test))), max(1, round(n * val)), frames


def estimate(cfg, manifest, steps=4, warmup=1):
    """The full training's time on this machine (see the module docstring), as a dict for the smoke result."""
    import keras
    import tensorflow as tf

    from trainer.training import distribute
    from trainer.training.feeder import Feeder
    from trainer.training.model import build_model, compile_model
    from trainer.training.steps import Steps

    train_clips, val_clips, frames = data_shape(cfg, manifest)
    strategy = distribute.choose_strategy(cfg["train"]["distribute"], None)
    replicas = strategy.num_replicas_in_sync
    batch = cfg["train"]["batch_size"] * replicas
    gpus = distribute.describe(strategy, cfg["train"]["batch_size"])["devices"]
    mixed = cfg["train"]["mixed_precision"] == "on" or (cfg["train"]["mixed_precision"] == "auto" and tf.config.list_physical_devices("GPU"))
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    try:
        classes = len(cfg["data"]["classes"])
        with strategy.scope():
            model = compile_model(build_model(cfg["model"], classes, cfg["data"]["feature_dim"]), cfg["train"], classes)
            model.optimizer.build(model.trainable_variables)
        step = Steps(model, strategy, classes, np.ones(classes, np.float32))
        per_call = cfg["train"]["steps_per_execution"]
        feeder = Feeder(strategy, 1, per_call)
        timed = per_call * math.ceil(steps / per_call)  # whole calls of steps_per_execution steps
        timings = {}
        for name, fn in (("train", step.train), ("evaluate", step.evaluate)):
            make = lambda count: _Batches(count, batch, frames, cfg["data"]["feature_dim"], classes)  # noqa: E731
            step.totals(feeder.run(make(per_call * warmup), fn, step.zeros()))  # tracing, autotuning: not counted
            t0 = time.perf_counter()
            step.totals(feeder.run(make(timed), fn, step.zeros()))  # waits for the device
            timings[name] = (time.perf_counter() - t0) / timed
        feeder.close()
    finally:
        keras.mixed_precision.set_global_policy(previous)
    train_steps, val_steps = math.ceil(train_clips / batch), math.ceil(val_clips / batch)
    epoch = train_steps * timings["train"] + val_steps * timings["evaluate"]
    return {
        "seconds_per_step": round(timings["train"], 4), "seconds_per_eval_step": round(timings["evaluate"], 4),
        "steps_per_epoch": train_steps, "val_steps_per_epoch": val_steps, "epochs": cfg["train"]["epochs"],
        "global_batch": batch, "replicas": replicas, "devices": gpus, "frames": frames, "train_clips": train_clips,
        "mixed_precision": bool(mixed), "seconds_per_epoch": round(epoch, 2), "seconds": round(epoch * cfg["train"]["epochs"], 1),
    }
