"""status.json, rewritten as the run trains (trainer/training/status.py RunStatus holds its format)."""

import time

from trainer.training.callbacks.base import LoopCallback


class StatusCallback(LoopCallback):
    """Rewrites status.json at the start and after every epoch, with the epoch's seconds and the slowest
    epoch's over every session of the run (a run whose status.json is much older is stalled: run_state.py).

        StatusCallback(RunStatus(run_dir, epochs=50), monitor="val_uar", mode="max")
    """

    def __init__(self, status, monitor, mode):
        super().__init__()
        self.status, self.monitor, self.mode = status, monitor, mode
        self.initial_epoch = None
        self._train_seconds = None

    HEARTBEAT_SECONDS = 60  # status.json is rewritten at least this often within an epoch: a long epoch is not a stall

    def batch_done(self, done, total):
        """Rewrites status.json (with the batch reached) once
        a minute, so a first epoch longer than stall_minutes does not read as stalled."""
        if time.monotonic() - self._beat >= self.HEARTBEAT_SECONDS:
            self._beat = time.monotonic()
            self.status.update(batch=done, batches=total)

    def on_epoch_begin(self, epoch, logs=None):
        self._began = self._beat = time.monotonic()
        if self.initial_epoch is None:
            self.initial_epoch = epoch
            self.status.training_started()
            self.status.update(state="running", epoch=epoch)

    def training_done(self, epoch, seconds):
        """Kept for status.json's last_epoch_train_seconds (samples/s leave the validation out)."""
        self._train_seconds = round(seconds, 3)

    def on_epoch_end(self, epoch, logs=None):
        seconds = round(time.monotonic() - self._began, 3)  # training + validation
        slowest = max(seconds, self.status.data.get("slowest_epoch_seconds") or 0)  # the stall threshold's measure
        self.status.data.update(last_epoch_seconds=seconds, slowest_epoch_seconds=slowest,
                                last_epoch_train_seconds=self._train_seconds)
        self.status.epoch_done(epoch, logs or {}, self.monitor, self.mode, self.initial_epoch)

    def epoch_timed(self, epoch, steps_seconds, other_seconds):
        """Once the epoch's callbacks are done: status.json's `timing` (written with the next update)."""
        self.status.epoch_timed(epoch, steps_seconds, other_seconds)
