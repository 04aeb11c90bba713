"""The hooks that trainer/training/loop.py calls beyond Keras's own, declared in one place.

Keras's `fit` calls `on_train_begin`, `on_epoch_end`, ...; our loop calls those too, and tells a
`LoopCallback` four more things it knows and `fit` does not. Each hook does nothing here: a
subclass overrides the ones it needs, and the loop calls every `LoopCallback` it is given.

    class Heartbeat(LoopCallback):
        def batch_done(self, done, total):
            print(f"{done}/{total}")

    loop.fit(model, strategy, train_gen, val_gen, epochs, callbacks=[Heartbeat(), ...])
"""

import keras


class LoopCallback(keras.callbacks.Callback):
    """A Keras callback that also hears the loop's own hooks (trainer/training/loop.py), in this order
    within an epoch: `batch_done` after every call to the device, `validation_confusion` and
    `training_done` before `on_epoch_end`; `train_failed` instead of `on_train_end` when an exception
    ends the loop. `resumed_epoch`, set in `on_train_begin`, is the epoch a restored run continues
    from (None: nothing restored, the run starts at epoch 0)."""

    resumed_epoch = None

    def batch_done(self, done, total):
        """`done` of the epoch's `total` training batches are trained."""

    def validation_confusion(self, epoch, matrix):
        """The epoch's validation confusion matrix (rows: true class, columns: predicted), as an int array."""

    def training_done(self, epoch, seconds):
        """The epoch's training took `seconds` (host time until the last training call returned; its
        validation left out: on a GPU, device work still queued then counts as validation time)."""

    def epoch_timed(self, epoch, steps_seconds, other_seconds):
        """Once the epoch's callbacks are done: its training and validation calls took `steps_seconds` (until the
        device was waited for), the rest of it (callbacks, logs) `other_seconds`."""

    def train_failed(self, error):
        """The loop ends with `error` (no `on_train_end` follows): save what is worth keeping; raising here
        would hide `error`."""
