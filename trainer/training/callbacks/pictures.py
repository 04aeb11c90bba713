"""The best epoch's validation pictures in TensorBoard, drawn as the run trains."""

import sys
import time
from pathlib import Path

from trainer.training.callbacks.base import LoopCallback


class ConfusionImages(LoopCallback):
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
        """Draw the waiting best epoch; a failure to draw it is said on stderr and does not hide `error`."""
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
