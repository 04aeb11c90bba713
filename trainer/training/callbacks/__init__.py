"""Keras callbacks of a training run, one concern per module: status file, graceful stop on SIGTERM,
learning rate and history.csv, an atomic best-model checkpoint, the best epoch's pictures, and the
backup (weights and the callbacks' state, consistent with each other) that a resumed run picks up.
`LoopCallback` declares the hooks trainer/training/loop.py calls beyond Keras's own.

    stop = GracefulStop()          # installs SIGTERM/SIGINT handlers
    model.fit(..., callbacks=[LearningRateLogger(), ..., StatusCallback(status, "val_uar", "max"), stop])
    if stop.requested: ...         # the run ended because it was asked to
"""

from trainer.training.callbacks.backup import ResumeState, RunBackup
from trainer.training.callbacks.base import LoopCallback
from trainer.training.callbacks.checkpoint import AtomicModelCheckpoint
from trainer.training.callbacks.logs import LearningRateLogger, SafeCSVLogger
from trainer.training.callbacks.pictures import ConfusionImages
from trainer.training.callbacks.status import StatusCallback
from trainer.training.callbacks.stop import GracefulStop

__all__ = ["AtomicModelCheckpoint", "ConfusionImages", "GracefulStop", "LearningRateLogger", "LoopCallback", "ResumeState",
           "RunBackup", "SafeCSVLogger", "StatusCallback"]
