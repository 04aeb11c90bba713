"""The minimal end-to-end check run before a long training: small, fast, and strict.

    smoke(["data/crema-d"], "runs")   # raises if anything is off; under a minute on a CPU
    smoke(["data/crema-d"], "runs", estimate_config="configs/full.yaml")   # also: the full training's time here

Trains `configs/smoke.yaml` (a few dozen clips, 2 epochs, a tiny model) through the
real run code, then checks that the loss is finite and that the saved model reloads
and predicts one probability per class. With `estimate_config`, it then estimates the full
config's training on this machine from the smoke run's own timing (status.json `timing`: set-up, each epoch's
time besides its steps, the end) and the full config's steps timed here (trainer/training/estimate.py), for
the deploy's estimate of the full training's time and cost.
"""

import csv
import math
import time
from pathlib import Path

import numpy as np

from trainer.config import load_config
from trainer.errors import UserError
from trainer.run_format import run_format
from trainer.training.environment import CODE_ROOT
from trainer.training.run import execute, new_run

SMOKE_CONFIG = CODE_ROOT / "configs" / "smoke.yaml"


class SmokeFailure(Exception):
    exit_code = 1


def smoke(data_dirs, runs_dir, synthetic=False, config=None, overrides=(), estimate_config=None):
    """Returns (run dir, seconds, estimate or None)."""
    t0 = time.monotonic()
    if synthetic:
        from trainer.data.synth import write_corpus

        synth_dir = Path(runs_dir) / "smoke-data"
        if not synth_dir.is_dir():
            write_corpus(synth_dir, "crema-d", clips=120, seed=0)
        data_dirs = [*(data_dirs or []), synth_dir]
    if not data_dirs:
        raise UserError("smoke needs --data DIR with feature files (or --synthetic to generate a small synthetic set).")
    cfg = load_config(config or SMOKE_CONFIG, overrides)
    run_dir = new_run(cfg, runs_dir, run_name=f"smoke-{time.strftime('%Y%m%d-%H%M%S')}")
    execute(run_dir, data_dirs=data_dirs)
    check_run(run_dir, len(cfg["data"]["classes"]))
    seconds = time.monotonic() - t0
    print(f"Smoke test passed in {seconds:.0f} s: {run_dir}", flush=True)
    estimated = None
    if estimate_config:
        from trainer.training.estimate import estimate

        estimated = estimate(load_config(estimate_config), run_dir)
        parts = ", ".join(f"{name.replace('_', ' ')} {seconds:.0f} s" for name, seconds in estimated["parts"].items())
        print(f"Full training here: {estimated['seconds_per_step']} s per step, {estimated['steps_per_epoch']} steps per epoch, "
              f"up to {estimated['epochs']} epochs: about {estimated['seconds']:.0f} s ({parts})", flush=True)
    return run_dir, seconds, estimated


def check_losses(run_dir):
    """SmokeFailure unless the run's history.csv holds training losses, every one finite."""
    with open(Path(run_dir) / run_format.HISTORY) as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    if not losses or not all(math.isfinite(v) for v in losses):
        raise SmokeFailure(f"Smoke test failed: training losses {losses} in {run_dir}/history.csv are not all finite.")


def check_run(run_dir, num_classes):
    """check_losses, then the best model reloaded predicts probabilities of every class for a validation batch."""
    from trainer.data import pipeline as data
    from trainer.training.model import load_model

    check_losses(run_dir)
    model = load_model(Path(run_dir) / run_format.BEST_MODEL)
    cfg = load_config(Path(run_dir) / run_format.CONFIG)
    prepared = data.load_prepared(run_dir)
    x, _ = data.make_generator(cfg, prepared.split["val"], prepared.entries, prepared.stats, shuffle=False)[0]
    probs = model.predict_on_batch(x)
    if probs.shape != (len(x), num_classes) or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):
        raise SmokeFailure(f"Smoke test failed: reloaded model predicts shape {probs.shape}, expected ({len(x)}, {num_classes}) probabilities.")
