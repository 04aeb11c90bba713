"""The run's backup/, from which `--resume` continues, and the callbacks' state saved with it.

    resume = ResumeState(checkpoint, early_stopping, reduce_lr, best_on_disk=lambda: 0.61, mode="max")
    model.fit(..., callbacks=[checkpoint, early_stopping, reduce_lr, RunBackup(run_dir / "backup", resume)])
"""

import json
import os
import shutil
from pathlib import Path

import h5py

from trainer.errors import ResumeError
from trainer.run_format import run_format
from trainer.training.callbacks.base import LoopCallback
from trainer.training.status import write_json_atomic


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


class RunBackup(LoopCallback):
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
        super().__init__()
        self.dir, self.resume_state, self.log = Path(backup_dir), resume_state, log
        self.history = Path(history) if history else None  # CSVLogger's file: rows past the backup's epoch go

    def files(self, previous=False):
        return {key: self.dir / (name + (".bkp" if previous else "")) for key, name in self.NAMES.items()}

    def on_train_begin(self, logs=None):
        self.resumed_epoch = None
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
            self.resumed_epoch = epoch
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
            run_format.write_atomic(self.history, "".join(keep))
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

    def on_epoch_end(self, epoch, logs=None):
        self._save(epoch + 1)

    def _save(self, epoch):
        """Back up the weights and the callbacks' state after `epoch` epochs (the order in the class docstring)."""
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
        with h5py.File(incoming, "r+") as f:
            f.attrs["epoch"] = epoch
        _fsync(incoming)
        os.replace(incoming, latest["weights"])
        write_json_atomic(latest["metadata"], {"epoch": epoch, "batch": 0})


def _weights_epoch(path):
    """The epoch stamped on a backup's weights file, None if it has none; OSError (as ResumeError) for a torn file."""
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
