"""A run stopped by a signal between two epochs, so that its backup is whole."""

import keras

from trainer.training.stop_request import SIGNALS, StopRequest


class GracefulStop(StopRequest, keras.callbacks.Callback):
    """First SIGTERM/SIGINT/SIGHUP: finish the current epoch (so its backup is saved), then stop.
    A second signal stops at once; the backup of the last finished epoch stays intact (trainer/training/stop_request.py).

        stop = GracefulStop(); model.fit(..., callbacks=[..., stop]); stop.requested
    """

    def __init__(self, signals=SIGNALS):
        keras.callbacks.Callback.__init__(self)
        StopRequest.__init__(self, signals)

    def on_epoch_end(self, epoch, logs=None):
        if self.requested:
            self.model.stop_training = True
