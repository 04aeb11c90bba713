"""Keras callbacks of a training run: status file, graceful stop on SIGTERM, learning rate,
an atomic best-model checkpoint, and the backup (weights and the callbacks' state, consistent
with each other) that a resumed run picks up.

    stop = GracefulStop()          # installs SIGTERM/SIGINT handlers
    model.fit(..., callbacks=[LearningRateLogger(), ..., StatusCallback(status, "val_uar", "max"), stop])
    if stop.requested: ...         # the run ended because it was asked to
"""

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import keras
from keras import ops

from trainer.errors import ResumeError
from trainer.results.runfiles import open_log
from trainer.training.status import write_json_atomic


class StatusCallback(keras.callbacks.Callback):
    """Rewrites status.json at the start and after every epoch, with the epoch's seconds and the slowest
    epoch's over every session of the run (a run whose status.json is much older is stalled: run_state.py).

        StatusCallback(RunStatus(run_dir, epochs=50), monitor="val_uar", mode="max")
    """

    def __init__(self, status, monitor, mode):
        super().__init__()
        self.status, self.monitor, self.mode = status, monitor, mode
        self.initial_epoch = None

    HEARTBEAT_SECONDS = 60  # status.json is rewritten at least this often within an epoch: a long epoch is not a stall

    def batch_done(self, done, total):
        """Called by the loop after each training step: rewrites status.json (with the batch reached) once
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
        """Called by the loop with the epoch's training seconds (its validation left out): samples/s."""
        self._train_seconds = round(seconds, 3)

    def on_epoch_end(self, epoch, logs=None):
        seconds = round(time.monotonic() - self._began, 3)  # training + validation
        slowest = max(seconds, self.status.data.get("slowest_epoch_seconds") or 0)  # the stall threshold's measure
        self.status.data.update(last_epoch_seconds=seconds, slowest_epoch_seconds=slowest,
                                last_epoch_train_seconds=getattr(self, "_train_seconds", None))
        self.status.epoch_done(epoch, logs or {}, self.monitor, self.mode, self.initial_epoch)

    def epoch_timed(self, epoch, steps_seconds, other_seconds):
        """Called by the loop once the epoch's callbacks are done: status.json's `timing` (written with the next update)."""
        self.status.epoch_timed(epoch, steps_seconds, other_seconds)


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
    """When the checkpoint saves a new best model, that epoch's validation confusion matrix and recall
    per class go to TensorBoard (logdir/images), so the pictures of the chosen epoch are there while
    the run trains. The matrix is the one the epoch's evaluation computed (the training loop hands it
    over with `validation_confusion` before `on_epoch_end`): nothing is predicted again, so the other
    workers of a cluster do not wait for the chief.

    Drawing takes about a second of CPU, longer than an epoch of a small run, and the device waits
    for it: a new best epoch is drawn at once when the last drawing is `every` seconds old or more,
    else at the next such best epoch, and the last best epoch at the end of training (a graceful stop
    included) or when training fails (a non-finite loss, a lost peer, a second signal) if it was not
    drawn yet: the pictures always show the epoch best.keras holds. Their titles name the run `run`
    (default: logdir's folder, as trainer/results/plots.py's run_label names it).

        callbacks=[checkpoint, ConfusionImages(checkpoint, classes, "runs/exp-3/logs"), ...]
    """

    def __init__(self, checkpoint, classes, logdir, every=60.0, run=None):
        from trainer.results.plots import run_label

        super().__init__()
        self.checkpoint, self.classes, self.logdir, self.every = checkpoint, classes, logdir, every
        self.run = run or run_label(Path(logdir).parent)
        self._before = self._confusion = None
        self._pending = None  # (epoch, matrix) of the latest best epoch, not drawn yet
        self._drawn_at = None  # time.monotonic() of the last drawing

    def validation_confusion(self, epoch, matrix):
        self._confusion = matrix

    def on_epoch_begin(self, epoch, logs=None):
        self._before, self._confusion = self.checkpoint.best, None

    def on_epoch_end(self, epoch, logs=None):
        if self.checkpoint.best == self._before or self._confusion is None:
            return
        self._pending = (epoch, self._confusion)
        if self._drawn_at is None or time.monotonic() - self._drawn_at >= self.every:
            self._draw()

    def on_train_end(self, logs=None):
        if self._pending is not None:
            self._draw()

    def train_failed(self, error):
        """The loop ended with `error` (trainer/training/loop.py): draw the waiting best epoch; a failure to draw
        it is said on stderr and does not hide `error`."""
        if self._pending is None:
            return
        try:
            self._draw()
        except Exception as e:  # noqa: BLE001 (the training's own error is the one to raise)
            print(f"The pictures of the best epoch {self._pending[0] + 1} were not drawn: {type(e).__name__}: {e}", file=sys.stderr)

    def _draw(self):
        from trainer.results.metrics import metrics_from_confusion
        from trainer.results.plots import confusion_png, log_image, recall_png

        epoch, matrix = self._pending
        metrics = metrics_from_confusion(matrix, self.classes)
        name = f"validation, epoch {epoch + 1}"
        log_image(self.logdir, "validation/confusion_matrix_at_best_epoch", confusion_png(metrics, name, self.run), epoch + 1)
        log_image(self.logdir, "validation/recall_per_class_at_best_epoch", recall_png(metrics, name, self.run), epoch + 1)
        self._pending, self._drawn_at = None, time.monotonic()


class ResumeState:
    """What the model-selection callbacks know, carried across a resume: the best value of the
    checkpoint, EarlyStopping's and ReduceLROnPlateau's counters. Without it a resumed run starts
    with no best value and overwrites best.keras with its first, possibly worse, epoch.

    RunBackup saves `snapshot(epoch)` with each epoch's weights and, on resume, `apply`-s the one
    saved with the weights it loads (after those callbacks' own resets in on_train_begin).
    EarlyStopping's best weights come from `best_model`. `best_on_disk` gives the monitored value of
    the best.keras on disk (status.json's best): when a resume falls back to the previous epoch's
    backup, best.keras may be the later epoch's, and the checkpoint must not replace it with a worse
    model. A worker that is not the chief has no backup: it `apply`-s the chief's state (trainer/training/loop.py).

        resume = ResumeState(checkpoint, early_stopping, reduce_lr, best_model=lambda: load_model(run_dir / "best.keras"),
                             best_on_disk=lambda: 0.61, mode="max")
        RunBackup(run_dir / "backup", resume)
    """

    def __init__(self, checkpoint, early_stopping, reduce_lr, best_model=None, best_on_disk=None, mode="max"):
        self.checkpoint, self.early_stopping, self.reduce_lr = checkpoint, early_stopping, reduce_lr
        self.best_model, self.best_on_disk, self.mode = best_model, best_on_disk, mode
        self.restored = None

    def apply(self, state):
        """Put the callbacks back in `state` (this run's saved one, or the chief's on another worker)."""
        es, rlr = self.early_stopping, self.reduce_lr
        if state.get("checkpoint_best") is not None and self.checkpoint is not None:
            self.checkpoint.best = state["checkpoint_best"]
        on_disk = self.best_on_disk() if self.best_on_disk is not None and self.checkpoint is not None else None
        if on_disk is not None and (self.checkpoint.best is None or (on_disk > self.checkpoint.best if self.mode == "max"
                                                                     else on_disk < self.checkpoint.best)):
            self.checkpoint.best = on_disk
        es.best, es.wait, es.best_epoch = state["early_stopping"]["best"], state["early_stopping"]["wait"], state["early_stopping"]["best_epoch"]
        rlr.best, rlr.wait, rlr.cooldown_counter = state["reduce_lr"]["best"], state["reduce_lr"]["wait"], state["reduce_lr"]["cooldown_counter"]
        if es.restore_best_weights and es.best is not None and self.best_model is not None:
            model = self.best_model()
            if model is not None:
                es.best_weights = model.get_weights()
        self.restored = state

    def snapshot(self, epochs_done):
        es, rlr = self.early_stopping, self.reduce_lr
        return {
            "epoch": epochs_done,
            "checkpoint_best": _number(self.checkpoint.best) if self.checkpoint is not None else None,
            "early_stopping": {"best": _number(es.best), "wait": int(es.wait), "best_epoch": int(es.best_epoch)},
            "reduce_lr": {"best": _number(rlr.best), "wait": int(rlr.wait), "cooldown_counter": int(rlr.cooldown_counter)},
        }


class RunBackup(keras.callbacks.BackupAndRestore):
    """The run's backup/, from which `--resume` continues: after every epoch, in this order,

        latest.weights.h5        the model's and optimizer's weights, stamped with the epoch (an HDF5
                                 attribute), written beside it and renamed into place
        training_metadata.json   {"epoch": E} (Keras' BackupAndRestore format), atomically
        callbacks.json           ResumeState.snapshot(E), atomically

    with the previous epoch's three files kept as *.bkp (copied before the new ones are written), so
    that whenever a kill strikes, one of the two sets is whole. A resume loads the latest set whose
    files agree on the epoch, else the previous one, restores it as the latest, and says in the log
    why it fell back (a torn or empty file, a resume state ahead of the weights); ResumeError when a
    backup exists but neither set can be used. A backup written before the stamps (no attribute)
    is used when its two JSON files agree.

        RunBackup(run_dir / "backup", resume_state, log=console.print)
    """

    NAMES = {"weights": "latest.weights.h5", "metadata": "training_metadata.json", "callbacks": "callbacks.json"}

    def __init__(self, backup_dir, resume_state, log=print, history=None):
        super().__init__(str(backup_dir), double_checkpoint=True, delete_checkpoint=False)
        self.dir, self.resume_state, self.log = Path(backup_dir), resume_state, log
        self.history = Path(history) if history else None  # CSVLogger's file: rows past the backup's epoch go

    def files(self, previous=False):
        return {key: self.dir / (name + (".bkp" if previous else "")) for key, name in self.NAMES.items()}

    def on_train_begin(self, logs=None):
        latest, previous = self.files(), self.files(previous=True)
        problems = []
        first_torn = not any(p.exists() for p in previous.values()) and not latest["metadata"].exists()
        for name, paths in (("latest", latest), ("previous", previous)):
            if not any(p.exists() for p in paths.values()) or (paths is latest and first_torn):
                continue  # none, or the first backup cut before its metadata (written last): no epoch was backed up
            try:
                epoch, state = self._read_set(paths)
            except ResumeError as e:
                problems.append(f"the {name} backup {e}")
                continue
            if paths is previous:
                problems = problems or [f"the latest backup ({latest['weights'].name}, ...) is missing"]
                for key in self.NAMES:  # the previous set becomes the latest again: the next save keeps it as .bkp
                    if paths[key].exists():
                        _copy_atomic(paths[key], latest[key])
            try:
                self._load(latest["weights"])
            except (OSError, ValueError, KeyError) as e:
                problems.append(f"the {name} backup's weights do not load ({type(e).__name__}: {str(e)[:200]})")
                continue
            self.model._initial_epoch = epoch
            if state is not None:
                self.resume_state.apply(state)
            if problems:
                self.log(f"Backup: {'; '.join(problems)}. Resuming from the previous backup instead: epoch {epoch} "
                         f"({self.dir}/*.bkp); the epoch after it is trained again.")
            self._trim_history(epoch)
            return
        if problems:
            raise ResumeError(f"Cannot resume from {self.dir}: {'; '.join(problems)}. Start a new run, or put back a copy "
                              "of backup/ (`fab fetch-results --backup` keeps one).")
        if first_torn and any(p.exists() for p in latest.values()):
            self.log(f"Backup: the first backup in {self.dir} was cut before it was complete (no {latest['metadata'].name}): "
                     "no epoch was backed up; the run starts again at epoch 0.")
        self._trim_history(0)  # no backup yet: the run starts at epoch 0, and a row a kill left before its backup goes

    def _trim_history(self, epoch):
        """history.csv keeps the rows of the epochs the backup holds (SafeCSVLogger opens it at its first epoch end,
        after this): an epoch trained again after a fallback, or a row written before a kill took the epoch's
        backup, is in it once."""
        if self.history is None or not self.history.is_file():
            return
        lines = self.history.read_text().splitlines(keepends=True)
        keep = lines[:1] + [line for line in lines[1:] if not line.split(",", 1)[0].isdigit() or int(line.split(",", 1)[0]) < epoch]
        if len(keep) != len(lines):
            tmp = self.history.with_name(f".{self.history.name}.tmp")
            tmp.write_text("".join(keep))
            os.replace(tmp, self.history)
            self.log(f"history.csv: {len(lines) - len(keep)} row(s) past epoch {epoch} removed (they are trained again)")

    def _read_set(self, paths):
        """(epoch, resume state or None) of one set of backup files; ResumeError saying why it cannot be used."""
        def json_of(key):
            try:
                return json.loads(paths[key].read_text())
            except FileNotFoundError:
                return None
            except (OSError, ValueError) as e:
                what = "is empty" if paths[key].exists() and paths[key].stat().st_size == 0 else f"cannot be read ({type(e).__name__})"
                raise ResumeError(f"{paths[key].name} {what}") from None

        if not paths["weights"].exists():
            raise ResumeError(f"has no {paths['weights'].name}")
        metadata, state = json_of("metadata"), json_of("callbacks")
        epoch = metadata.get("epoch") if isinstance(metadata, dict) else None
        if not isinstance(epoch, int) or epoch < 0:
            raise ResumeError(f"{paths['metadata'].name} holds no epoch ({metadata!r:.80})")
        stamp = _weights_epoch(paths["weights"])  # None: written before the stamps
        if stamp is not None and stamp != epoch:
            raise ResumeError(f"{paths['weights'].name} is of epoch {stamp}, {paths['metadata'].name} of epoch {epoch}")
        if state is None and stamp is not None:
            raise ResumeError(f"has no {paths['callbacks'].name}")
        if state is not None and state.get("epoch") != epoch:
            raise ResumeError(f"{paths['callbacks'].name} is of epoch {state.get('epoch')}, its weights of epoch {epoch}")
        return epoch, state

    def _load(self, weights):
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)  # its variables are in the file too
        self.model.load_weights(str(weights))

    def _save_model(self):
        epoch = self._current_epoch
        self.dir.mkdir(parents=True, exist_ok=True)
        latest, previous = self.files(), self.files(previous=True)
        for key in self.NAMES:
            if latest[key].exists():
                _copy_atomic(latest[key], previous[key])
        # commit, then point: callbacks.json and the weights first, training_metadata.json (the set's epoch) last; a set
        # without it was never committed (a kill during the first backup) and is no backup
        write_json_atomic(latest["callbacks"], self.resume_state.snapshot(epoch))
        incoming = self.dir / ".incoming.weights.h5"  # Keras saves only to a name ending in .weights.h5
        self.model.save_weights(str(incoming), overwrite=True)
        import h5py

        with h5py.File(incoming, "r+") as f:
            f.attrs["epoch"] = epoch
        _fsync(incoming)
        os.replace(incoming, latest["weights"])
        write_json_atomic(latest["metadata"], {"epoch": epoch, "batch": 0})


def _weights_epoch(path):
    """The epoch stamped on a backup's weights file, None if it has none; OSError (as ResumeError) for a torn file."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            value = f.attrs.get("epoch")
    except OSError as e:
        raise ResumeError(f"{Path(path).name} is torn or not an HDF5 file ({str(e)[:120]})") from None
    return None if value is None else int(value)


def _fsync(path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _copy_atomic(src, dst):
    tmp = Path(dst).with_name(f".{Path(dst).name}.tmp")
    shutil.copyfile(src, tmp)
    _fsync(tmp)
    os.replace(tmp, dst)


def _number(value):
    """A callback's best value as JSON: None before any epoch, never inf."""
    if value is None:
        return None
    value = float(value)
    return value if abs(value) != float("inf") else None


class SafeCSVLogger(keras.callbacks.CSVLogger):
    """Keras' CSVLogger, but history.csv is opened without following a link (trainer/results/runfiles.open_log):
    a run directory where `history.csv -> /etc/shadow` is refused, never written through.

        SafeCSVLogger(run_dir / "history.csv", append=True)
    """

    def on_train_begin(self, logs=None):
        if self.csv_file and not self.csv_file.closed:
            self.csv_file.close()
        # opened for the rows at the first epoch end, not here: a resume's RunBackup trims the file (a rename) in its own
        # on_train_begin, which may come after this one (the row is written before the epoch's backup); a link is
        # refused now, before any epoch is trained
        open_log(self.filename, "a").close()
        self.csv_file, self.writer, self.keys = None, None, None

    def on_epoch_end(self, epoch, logs=None):
        if self.csv_file is None:
            self.csv_file = open_log(self.filename, "a" if self.append else "w")
            self.append_header = not (self.append and os.fstat(self.csv_file.fileno()).st_size)
        super().on_epoch_end(epoch, logs)
