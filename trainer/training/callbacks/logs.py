"""What the epoch logs carry, and history.csv written from them."""

import os

import keras
from keras import ops

from trainer.results.runfiles import open_log


class LearningRateLogger(keras.callbacks.Callback):
    """Adds `learning_rate` to the epoch logs, so TensorBoard and history.csv show it.

        callbacks=[LearningRateLogger(), keras.callbacks.CSVLogger("history.csv")]
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(ops.convert_to_numpy(self.model.optimizer.learning_rate))


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
