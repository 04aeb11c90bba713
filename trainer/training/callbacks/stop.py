"""A run stopped by a signal between two epochs, so that its backup is whole."""

import signal

import keras


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
