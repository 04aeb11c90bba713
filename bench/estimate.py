"""The smoke test's estimate of a training against the training's own time, here; exit 1 beyond +-25 %.

    python bench/estimate.py [--cases tiny,demo] [--repeat 1] [--clips 600] [--data DIR]

Per case, what `fab deploy-full` does on a host, without SSH: synthetic CREMA-D clips (`python -m trainer synth`,
600 as `make demo` writes), `python -m trainer validate --pack` (preflight), `python -m trainer smoke
--estimate-config CONFIG` (the smoke test, configs/smoke.yaml, and its JSON result's `estimate`), then
`python -m trainer train --config CONFIG --packed` (the training). The training's time is the trainer's,
from its start to its end: status.json's compute_seconds, which metrics.json's compute record prices and
the estimate estimates. The cases:

    demo   configs/demo.yaml (`make demo`'s training: 10 epochs of a 64-unit model on the 600 clips)
    tiny   a 16-unit model on 120 of the clips for 3 epochs: its set-up and end outweigh its epochs

It prints, per case and repetition, the estimate's parts beside the run's (status.json `timing`): set-up,
first calls and epochs (the run's: its epochs' steps and callbacks), end; the error (actual against
estimate) and the machine's load average before and after, since the smoke test and the training run a
minute apart and anything else running on the machine in between moves the figures. With `--repeat N`
each case runs N times (smoke test, then training) and the case is judged on its median error.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainer.run_format import run_format  # noqa: E402 - the run's file names

LIMIT = 0.25
TINY = {"data": {"max_clips": 120, "max_frames": 100}, "model": {"units": 16, "head_units": 16},
        "train": {"batch_size": 16, "epochs": 3, "patience": 3, "workers": 1}}


def trainer(*args):
    proc = subprocess.run([sys.executable, "-m", "trainer", *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"python -m trainer {' '.join(map(str, args))} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")


def run_case(name, config, data, tmp):
    """(estimate, status.json, load averages) of one case: the smoke test's estimate of CONFIG, then CONFIG's training."""
    packed, result = tmp / "packed", tmp / f"{name}-smoke.json"
    trainer("validate", "--data", data, "--config", config, "--pack", packed)
    load = os.getloadavg()[0]
    trainer("smoke", "--data", data, "--out", tmp / "smoke", "--estimate-config", config, "--result", result)
    trainer("train", "--config", config, "--data", data, "--out", tmp / "runs", "--run-name", name, "--packed", packed)
    estimate = json.loads(result.read_text())["estimate"]
    status = json.loads((tmp / "runs" / name / run_format.STATUS).read_text())
    return estimate, status, (load, os.getloadavg()[0])


def report(name, est, status, load):
    """The case's lines and its error (actual / estimate - 1)."""
    t, parts = status["timing"], est["parts"]
    took = status["compute_seconds"]
    epochs = took - t["setup_seconds"] - t["end_seconds"]
    error = took / est["seconds"] - 1
    steps_only = est["epochs"] * (est["steps_per_epoch"] * est["seconds_per_step"] + est["val_steps_per_epoch"] * est["seconds_per_eval_step"])
    lines = [f"{name}: estimated {est['seconds']:.1f} s, took {took:.1f} s ({error * 100:+.0f} %); "
             f"load average {load[0]:.2f} before the smoke test, {load[1]:.2f} after the training",
             f"  the steps alone, all the estimate counted before: {steps_only:.1f} s (error {took / steps_only * 100 - 100:+.0f} %)",
             f"  {'part':<28} {'estimate s':>10} {'actual s':>9}",
             f"  {'set-up':<28} {parts['setup']:>10.1f} {t['setup_seconds']:>9.1f}",
             f"  {'first calls + ' + str(status['epoch']) + ' epochs':<28} {parts['first_calls'] + parts['epochs']:>10.1f} {epochs:>9.1f}",
             f"  {'end':<28} {parts['end']:>10.1f} {t['end_seconds']:>9.1f}",
             f"  per epoch after the first: estimated {est['seconds_per_epoch']:.2f} s, the last took "
             f"{t['last_epoch']['steps_seconds'] + t['last_epoch']['other_seconds']:.2f} s; first calls estimated "
             f"{parts['first_calls']:.1f} s, the first epoch took {t['first_epoch']['steps_seconds'] + t['first_epoch']['other_seconds']:.1f} s"]
    return lines, error


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="tiny,demo", help="comma-separated: tiny, demo")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each case (smoke test, then training); judged on the median")
    ap.add_argument("--clips", type=int, default=600, help="synthetic clips (without --data)")
    ap.add_argument("--data", type=Path, help="a feature folder (default: synthetic CREMA-D clips)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="facenet-estimate-"))
    data = a.data
    if data is None:
        data = tmp / "data" / "crema-d"
        trainer("synth", "--out", data, "--clips", a.clips, "--seed", 0)
    (tmp / "tiny.yaml").write_text(json.dumps(TINY))  # YAML is a superset of JSON
    configs = {"demo": ROOT / "configs" / "demo.yaml", "tiny": tmp / "tiny.yaml"}
    medians = {}
    for name in a.cases.split(","):
        errors = []
        for k in range(1, a.repeat + 1):
            t0 = time.monotonic()
            label = f"{name}-{k}" if a.repeat > 1 else name
            est, status, load = run_case(label, configs[name], data, tmp)
            lines, error = report(label, est, status, load)
            print("\n".join(lines) + f"\n  ({time.monotonic() - t0:.0f} s)", flush=True)
            errors.append(error)
        medians[name] = statistics.median(errors)
    print("median error: " + ", ".join(f"{name} {error * 100:+.0f} %" for name, error in medians.items())
          + f" (limit +-{LIMIT * 100:.0f} %); runs in {tmp}")
    return 0 if all(abs(error) <= LIMIT for error in medians.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
