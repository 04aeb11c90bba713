"""Keras callbacks of a training run: status file, graceful stop on SIGTERM, learning rate,
an atomic best-model checkpoint and the state that a resumed run needs to pick up.

    stop = GracefulStop()          # installs SIGTERM/SIGINT handlers
    model.fit(..., callbacks=[LearningRateLogger(), ..., StatusCallback(status, "val_uar", "max"), stop])
    if stop.requested: ...         # the run ended because it was asked to
"""

import json
import os
import signal
import time
from pathlib import Path

import keras
from keras import ops

from trainer.runfiles import open_log
from trainer.status import write_json_atomic


class StatusCallback(keras.callbacks.Callback):
    """Rewrites status.json at the start and after every epoch.

        StatusCallback(RunStatus(run_dir, epochs=50), monitor="val_uar", mode="max")
    """

    def __init__(self, status, monitor, mode):
        super().__init__()
        self.status, self.monitor, self.mode = status, monitor, mode
        self.initial_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self._began = time.monotonic()
        if self.initial_epoch is None:
            self.initial_epoch = epoch
            self.status.update(state="running", epoch=epoch)

    def on_epoch_end(self, epoch, logs=None):
        self.status.data["last_epoch_seconds"] = round(time.monotonic() - self._began, 3)  # training + validation
        self.status.epoch_done(epoch, logs or {}, self.monitor, self.mode, self.initial_epoch)


class LearningRateLogger(keras.callbacks.Callback):
    """Adds `learning_rate` to the epoch logs, so TensorBoard and history.csv show it.

        callbacks=[LearningRateLogger(), keras.callbacks.CSVLogger("history.csv")]
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(ops.convert_to_numpy(self.model.optimizer.learning_rate))


class GracefulStop(keras.callbacks.Callback):
    """First SIGTERM/SIGINT/SIGHUP: finish the current epoch (so its backup is saved), then stop.
    (SIGHUP is what a closed tmux session or terminal sends.)
    A second signal stops at once; the backup of the last finished epoch stays intact.

        stop = GracefulStop(); model.fit(..., callbacks=[..., stop]); stop.requested
    """

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT, signal.SIGHUP)):
        super().__init__()
        self.requested = False
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt(f"second signal {signal.Signals(signum).name}: stopping now")
        self.requested = True
        print(f"Received {signal.Signals(signum).name}: stopping after this epoch "
              "(send it again to stop at once).", flush=True)

    def on_epoch_end(self, epoch, logs=None):
        if self.requested:
            self.model.stop_training = True


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint that writes to a temp file beside the target and renames it, so a kill
    during the save leaves the previous best model, never a torn one.

        AtomicModelCheckpoint("run/best.keras", monitor="val_uar", mode="max", save_best_only=True)
    """

    def _save_model(self, epoch, batch, logs):
        final = self.filepath
        tmp = str(Path(final).with_name(f".{Path(final).stem}.tmp{Path(final).suffix}"))
        if os.path.exists(tmp):
            os.remove(tmp)
        self.filepath = tmp
        try:
            super()._save_model(epoch, batch, logs)  # writes tmp only when the epoch is the best so far
        finally:
            self.filepath = final
        if os.path.exists(tmp):
            os.replace(tmp, final)


class ConfusionImages(keras.callbacks.Callback):
    """When the checkpoint saves a new best model, that model's validation confusion matrix and recall
    per class go to TensorBoard (logdir/images), so the pictures of the chosen epoch are there while
    the run trains.

        callbacks=[checkpoint, ConfusionImages(checkpoint, val_gen, classes, "run/logs"), ...]
    """

    def __init__(self, checkpoint, val_gen, classes, logdir):
        super().__init__()
        self.checkpoint, self.val_gen, self.classes, self.logdir = checkpoint, val_gen, classes, logdir
        self._before = None

    def on_epoch_begin(self, epoch, logs=None):
        self._before = self.checkpoint.best

    def on_epoch_end(self, epoch, logs=None):
        if self.checkpoint.best == self._before:
            return
        from trainer.evaluate import score
        from trainer.plots import confusion_png, log_image, recall_png

        metrics = score(self.model, self.val_gen, self.classes)
        name = f"validation, epoch {epoch + 1}"
        log_image(self.logdir, "validation/confusion_matrix_at_best_epoch", confusion_png(metrics, name), epoch + 1)
        log_image(self.logdir, "validation/recall_per_class_at_best_epoch", recall_png(metrics, name), epoch + 1)


class ResumeState(keras.callbacks.Callback):
    """Keeps what the model-selection callbacks know across a resume: the best value of the
    checkpoint, EarlyStopping's and ReduceLROnPlateau's counters. Without it a resumed run starts
    with no best value and overwrites best.keras with its first, possibly worse, epoch.

    Saved atomically to `path` after every epoch (list it after those callbacks); restored in
    `on_train_begin`, after their own resets. EarlyStopping's best weights come from `best_model`.

        ResumeState(run_dir / "backup" / "callbacks.json", checkpoint, early_stopping, reduce_lr,
                    best_model=lambda: load_model(run_dir / "best.keras"))
    """

    def __init__(self, path, checkpoint, early_stopping, reduce_lr, best_model=None):
        super().__init__()
        self.path = Path(path) if path else None  # None: a worker that is not the chief (writes nothing)
        self.checkpoint, self.early_stopping, self.reduce_lr = checkpoint, early_stopping, reduce_lr
        self.best_model = best_model
        self.restored = None

    def on_train_begin(self, logs=None):
        try:
            state = json.loads(self.path.read_text()) if self.path else None
        except (OSError, ValueError):
            state = None
        if state is not None:
            self.apply(state)

    def apply(self, state):
        """Put the callbacks back in `state` (this run's saved one, or the chief's on another worker)."""
        es, rlr = self.early_stopping, self.reduce_lr
        if state.get("checkpoint_best") is not None and self.checkpoint is not None:
            self.checkpoint.best = state["checkpoint_best"]
        es.best, es.wait, es.best_epoch = state["early_stopping"]["best"], state["early_stopping"]["wait"], state["early_stopping"]["best_epoch"]
        rlr.best, rlr.wait, rlr.cooldown_counter = state["reduce_lr"]["best"], state["reduce_lr"]["wait"], state["reduce_lr"]["cooldown_counter"]
        if es.restore_best_weights and es.best is not None and self.best_model is not None:
            model = self.best_model()
            if model is not None:
                es.best_weights = model.get_weights()
        self.restored = state

    def on_epoch_end(self, epoch, logs=None):
        if self.path is None:
            return
        es, rlr = self.early_stopping, self.reduce_lr
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, {
            "epoch": epoch + 1,
            "checkpoint_best": _number(self.checkpoint.best),
            "early_stopping": {"best": _number(es.best), "wait": int(es.wait), "best_epoch": int(es.best_epoch)},
            "reduce_lr": {"best": _number(rlr.best), "wait": int(rlr.wait), "cooldown_counter": int(rlr.cooldown_counter)},
        })


def _number(value):
    """A callback's best value as JSON: None before any epoch, never inf."""
    if value is None:
        return None
    value = float(value)
    return value if abs(value) != float("inf") else None


class SafeCSVLogger(keras.callbacks.CSVLogger):
    """Keras' CSVLogger, but history.csv is opened without following a link (trainer/runfiles.open_log):
    a run directory where `history.csv -> /etc/shadow` is refused, never written through.

        SafeCSVLogger(run_dir / "history.csv", append=True)
    """

    def on_train_begin(self, logs=None):
        if self.csv_file and not self.csv_file.closed:
            self.csv_file.close()
        self.csv_file = open_log(self.filename, "a" if self.append else "w")
        self.append_header = not (self.append and os.fstat(self.csv_file.fileno()).st_size)
        self.writer, self.keys = None, None
