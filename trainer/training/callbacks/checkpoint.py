"""The run's best model, saved atomically when the monitored metric improves."""

import os
import warnings
from pathlib import Path

import keras
import numpy as np


class AtomicModelCheckpoint(keras.callbacks.Callback):
    """Keras' ModelCheckpoint (a `.keras` file per epoch, or only when `monitor` improves with
    `save_best_only`), written to a temp file beside the target and renamed into place, so a kill
    during the save leaves the previous best model, never a torn one. `best` is the best value so
    far (None before the first); ResumeState sets it on a resume.

        AtomicModelCheckpoint("run/best.keras", monitor="val_uar", mode="max", save_best_only=True)
    """

    def __init__(self, filepath, monitor="val_loss", mode="min", save_best_only=False):
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"Expected mode 'min' or 'max'. Received: mode={mode!r}")
        if not str(filepath).endswith(".keras"):
            raise ValueError(f"Expected a filepath ending in .keras. Received: filepath={filepath}")
        self.filepath, self.monitor, self.mode, self.save_best_only = str(filepath), monitor, mode, save_best_only
        self.best = None

    def on_epoch_end(self, epoch, logs=None):
        if self._should_save(logs or {}):
            self._save()

    def _should_save(self, logs):
        """As ModelCheckpoint decides: every epoch, or when `monitor` beats `best` (a missing or non-scalar
        value is saved, with a warning)."""
        if not self.save_best_only:
            return True
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(f"Can save best model only with {self.monitor} available.", stacklevel=3)
            return True
        if np.ndim(current) > 0:
            warnings.warn(f"Can save best model only when `monitor` is a scalar value. Received: {current}. "
                          "Falling back to `save_best_only=False`.", stacklevel=3)
            return True
        if self.best is None or (current > self.best if self.mode == "max" else current < self.best):
            self.best = current
            return True
        return False

    def _save(self):
        final = Path(self.filepath)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.stem}.tmp{final.suffix}")  # Keras saves a model only to a name ending in .keras
        if tmp.exists():
            tmp.unlink()
        self.model.save(str(tmp), overwrite=True)
        os.replace(tmp, final)
