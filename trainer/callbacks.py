"""Keras callbacks of a training run: status file, graceful stop on SIGTERM, learning rate.

    stop = GracefulStop()          # installs SIGTERM/SIGINT handlers
    model.fit(..., callbacks=[LearningRateLogger(), ..., StatusCallback(status, "val_uar", "max"), stop])
    if stop.requested: ...         # the run ended because it was asked to
"""

import signal

import keras
from keras import ops


class StatusCallback(keras.callbacks.Callback):
    """Rewrites status.json at the start and after every epoch.

        StatusCallback(RunStatus(run_dir, epochs=50), monitor="val_uar", mode="max")
    """

    def __init__(self, status, monitor, mode):
        super().__init__()
        self.status, self.monitor, self.mode = status, monitor, mode
        self.initial_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.initial_epoch is None:
            self.initial_epoch = epoch
            self.status.update(state="running", epoch=epoch)

    def on_epoch_end(self, epoch, logs=None):
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
