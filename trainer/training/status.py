"""status.json: the one file that says how a run is doing, never half-written.

States: starting, running, finished, failed, stopped. Written atomically (temp file
in the same directory, then rename), so a reader sees the old or the new file, never
a torn one. The deploy monitor reads it over SSH.

`timing` says where this session's time went, for the estimate of a longer run (trainer/training/estimate.py
reads the smoke test's): `setup_seconds` (the trainer's start to its first epoch: data, TensorFlow, model),
`first_epoch` and `last_epoch` ({"epoch", "steps_seconds": its training and validation calls,
"other_seconds": the rest of it, mostly the callbacks: checkpoints, backup, logs, pictures}) and, once
finished, `end_seconds` (the last epoch's end to the run's: the best model scored, pictures, metrics).
"""

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from trainer.run_format import run_format


def now_iso():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path, data):
    """`data` as JSON, NumPy scalars as plain numbers, written atomically (run_format.write_atomic)."""
    run_format.write_json(path, data, mode=0o644, default=_plain)


def _plain(value):
    if hasattr(value, "item"):  # NumPy scalars
        return value.item()
    raise TypeError(f"Cannot write {type(value).__name__} to JSON")


class RunStatus:
    """Holds the fields of status.json and rewrites the file on every `update`."""

    def __init__(self, run_dir, epochs, mirror=None, **fields):
        self.path = Path(run_dir) / run_format.STATUS
        self.mirror = mirror  # (path, fields): the same status there too, e.g. a CV run's, with fold k of K
        self._run_started = None  # the mirrored run's own start (its first fold's), which names it in storage and `fab watch`
        if mirror:
            try:
                self._run_started = json.loads(Path(mirror[0]).read_text()).get("started_at")
            except (OSError, ValueError, AttributeError):
                pass
        self._t0 = time.monotonic()
        self.data = {
            "state": "starting", "run": Path(run_dir).name, "pid": os.getpid(),
            "epoch": 0, "epochs": epochs, "last": {}, "best": None,
            "started_at": now_iso(), "updated_at": now_iso(),
            "seconds_per_epoch": None, "eta_seconds": None, "error": None, **fields,
        }
        if self.path.exists():  # a resumed run keeps its history, its compute time and its price
            old = json.loads(self.path.read_text())
            keep = ("started_at", "best", "compute_seconds", "price_per_hour", "slowest_epoch_seconds")
            self.data.update({k: old[k] for k in keep if k in old})
            self.data["resumed_at"] = now_iso()
        self._compute_before = self.data.setdefault("compute_seconds", 0.0)
        self.data["timing"] = {}  # this session's (module docstring)
        self._last_epoch_end = None
        self.update()

    def elapsed(self):
        """Seconds since this session of the trainer started."""
        return time.monotonic() - self._t0

    def update(self, **fields):
        if fields.get("state") == "finished" and self._last_epoch_end is not None:
            self.data["timing"]["end_seconds"] = round(time.monotonic() - self._last_epoch_end, 3)
        self.data.update(fields, updated_at=now_iso())
        # the trainer's wall time over every session of the run: what its machine was paid for
        self.data["compute_seconds"] = round(self._compute_before + time.monotonic() - self._t0, 1)
        write_json_atomic(self.path, self.data)
        if self.mirror:
            path, extra = self.mirror
            data = {**self.data, **extra, "started_at": self._run_started or self.data["started_at"]}
            later = extra.get("folds", 0) - extra.get("fold", 0)  # folds still to train after this one
            if data["state"] == "finished" and later > 0:
                data["state"] = "running"  # one fold done, the run goes on
            if later > 0 and data.get("seconds_per_epoch"):  # the whole run's ETA (an upper bound: early stopping)
                data["eta_seconds"] = round((data.get("eta_seconds") or 0) + later * data["epochs"] * data["seconds_per_epoch"], 1)
            write_json_atomic(path, data)

    def training_started(self):
        """The first epoch of this session begins: what came before is its set-up (written with the next update)."""
        self.data["timing"].setdefault("setup_seconds", round(self.elapsed(), 3))

    def epoch_timed(self, epoch, steps_seconds, other_seconds):
        """Epoch `epoch` (0-based) took `steps_seconds` in its training and validation calls, `other_seconds` besides."""
        entry = {"epoch": epoch + 1, "steps_seconds": round(steps_seconds, 3), "other_seconds": round(other_seconds, 3)}
        self.data["timing"].setdefault("first_epoch", entry)
        self.data["timing"]["last_epoch"] = entry
        self._last_epoch_end = time.monotonic()  # what comes after the last one, until `finished`, is the run's end

    def epoch_done(self, epoch, logs, monitor, mode, initial_epoch):
        done = epoch + 1
        per_epoch = (time.monotonic() - self._t0) / max(1, done - initial_epoch)
        best = self.data["best"]
        value = logs.get(monitor)
        if value is not None and (best is None or (value > best["value"] if mode == "max" else value < best["value"])):
            best = {"metric": monitor, "value": float(value), "epoch": done}
        self.update(state="running", epoch=done, last={k: float(v) for k, v in logs.items()}, best=best,
                    seconds_per_epoch=round(per_epoch, 2),
                    eta_seconds=round(per_epoch * (self.data["epochs"] - done), 1))
