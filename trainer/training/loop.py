"""The training loop: one code path for one device, N devices of a host and N hosts.

    history = fit(model, strategy, train_gen, val_gen, epochs=50, callbacks=[...], class_weight={0: 1.2, ...},
                  steps_per_execution=4)
    history.stopped_by_signal      # a worker was asked to stop (SIGTERM): the run is resumable

Keras 3's `model.fit` cannot run under MultiWorkerMirroredStrategy (keras-team/keras 20585), so
the loop is ours: compiled steps that call `strategy.run` (trainer/training/steps.py), fed K batches per call
by trainer/training/feeder.py, with the Keras callbacks driven as `fit` drives them (train begin, epoch
begin/end, train end; logs named as `fit` names them: loss, accuracy, uar, val_loss, val_accuracy,
val_uar). On one device it trains exactly as `fit`, bit for bit. Each global batch of the generator's
plan (the same on every worker: same data, same seed) is cut into one share per replica. The
replicas keep their loss and confusion sums on their devices: the epoch's one all-reduce and one
wait for the device come after its validation.

At the start every worker takes the chief's resumed state (weights, optimizer, epoch, the
callbacks' counters); at each epoch end the workers agree on stopping, so none is left waiting
in a collective for a peer that stopped; the watchdog of a cluster (trainer/training/peers.py) is reset by
every call and paused while the callbacks work; a wait for the chief's own work (its backup restored at
the start, its epoch end) and a newly traced step's first call get its long allowance. An epoch whose
training loss or weights are not finite raises NonFiniteLoss or NonFiniteWeights before any callback
sees it, so no checkpoint or backup holds its weights (the weights are checked too: kernels that
turn NaN into 0 can keep the loss finite).
"""

import time

import keras
import numpy as np

from trainer.errors import NonFiniteLoss, NonFiniteWeights, Superseded
from trainer.results.metrics import metrics_from_confusion
from trainer.training import distribute
from trainer.training.callbacks.base import LoopCallback
from trainer.training.feeder import Feeder
from trainer.training.peers import NoWatchdog
from trainer.training.steps import Steps


class History(keras.callbacks.History):
    stopped_by_signal = False


# over 50 lines on purpose: one epoch's steps in the order every worker takes them, read top to bottom
def fit(model, strategy, train_gen, val_gen, epochs, callbacks, class_weight=None, resume=None, stop=None,
        workers=1, log=print, steps_per_execution=1, watchdog=None, fence=None):
    """Train `model` (built and compiled under `strategy`) for `epochs`; returns the History.
    `resume` is the ResumeState: the chief's `restored` state is `apply`-ed on the others;
    `stop` is the GracefulStop callback whose `requested` flag every worker agrees on;
    `steps_per_execution` batches go to the device per call; `watchdog` (trainer/training/peers.py) is beaten
    after every call; `fence()` (trainer/training/fence.py) says why this launch no longer owns the run, or None: asked
    at every epoch end before any callback, it raises Superseded. A LoopCallback among `callbacks` also
    hears the loop's own hooks (trainer/training/callbacks/base.py): each call's progress, the epoch's
    validation confusion matrix and training seconds, the epoch's steps and other seconds once its callbacks are
    done, an exception that ends the loop; and a restored
    run's epoch from it (`resumed_epoch`) is where the training starts."""
    history = History()
    cbs = keras.callbacks.CallbackList([*callbacks, history], model=model, epochs=epochs, steps=len(train_gen), verbose=0)
    classes = model.output_shape[-1]
    weights = np.ones(classes, np.float32)
    for c, w in (class_weight or {}).items():
        weights[c] = w
    watch = watchdog or NoWatchdog()
    steps = Steps(model, strategy, classes, weights, watch)
    if not model.optimizer.built:  # built again, a LossScaleOptimizer would start from its initial scale
        with strategy.scope():
            model.optimizer.build(model.trainable_variables)
    model.stop_training = False
    hooked = [c for c in callbacks if isinstance(c, LoopCallback)]
    feeder = Feeder(strategy, workers, steps_per_execution, log)
    feeder.whole_shares(train_gen, "training")
    feeder.whole_shares(val_gen, "validation", evaluation=True)
    watch.pause()  # the chief may restore a backup here
    cbs.on_train_begin()
    watch.long_wait()  # the others wait here for the chief's restored backup
    resumed = next((c.resumed_epoch for c in hooked if c.resumed_epoch is not None), 0)
    start = _sync_start(strategy, model, resumed, resume)
    logs = {}

    def step_done(done, total):
        watch.beat()
        for c in hooked:
            c.batch_done(done, total)

    try:
        for epoch in range(start, epochs):
            t0 = time.monotonic()
            cbs.on_epoch_begin(epoch)
            t_train = time.monotonic()
            train = feeder.run(train_gen, steps.train, steps.zeros(), on_batch=step_done, name="training")
            train_seconds = time.monotonic() - t_train
            val = feeder.run(val_gen, steps.evaluate, steps.zeros(), on_batch=lambda done, total: watch.beat(), name="validation")
            if steps.traced:  # a peer may still be tracing (its evaluation has no collective to wait on us in)
                watch.long_wait()
                steps.traced = False
            train, val = steps.totals(train, val)  # the epoch's one all-reduce and wait for the device
            steps_seconds = time.monotonic() - t_train
            watch.pause()
            logs = {**_logs(train), **{f"val_{k}": v for k, v in _logs(val).items()}}
            line = f"Epoch {epoch + 1}/{epochs} - {time.monotonic() - t0:.0f}s - " + " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
            _refuse_non_finite(model, epoch, logs, line, log)  # before any callback saves this epoch's weights
            if fence is not None:
                reason = fence()
                watch.long_wait()  # a collective: a peer lost here is found within the long allowance
                fenced = distribute.agree(strategy, [reason is not None])[0]  # every worker stops here, none waits on a peer
                watch.pause()
                if fenced:
                    log(line)
                    raise Superseded(f"{reason or 'another worker was fenced'}; epoch {epoch + 1} was not saved, and this launch "
                                     "writes no result (the run continues under the launch that took it over)")
            for c in hooked:
                c.validation_confusion(epoch, _confusion(val))
                c.training_done(epoch, train_seconds)
            cbs.on_epoch_end(epoch, logs)
            train_gen.on_epoch_end()
            log(line)
            for c in hooked:
                c.epoch_timed(epoch, steps_seconds, time.monotonic() - t0 - steps_seconds)
            watch.long_wait()  # the others wait here for the chief's epoch end (checkpoints, backup): its own work
            stop_now, by_signal = distribute.agree(strategy, [model.stop_training, stop is not None and stop.requested])
            if by_signal:
                history.stopped_by_signal = True
            if stop_now:
                break
    except BaseException as error:  # no on_train_end: a LoopCallback may still save what it holds
        for c in hooked:
            c.train_failed(error)
        raise
    finally:
        feeder.close()
        watch.pause()
    history.weights_sha256 = weights_digest(model)  # the last epoch's, before EarlyStopping restores the best
    cbs.on_train_end(logs)
    return history


def _refuse_non_finite(model, epoch, logs, line, log):
    """NonFiniteLoss or NonFiniteWeights for an epoch whose loss or weights hold NaN/inf (the same on every
    worker: the loss is all-reduced, the weights mirrored, so all stop here); `line` is logged first."""
    if not np.isfinite(logs["loss"]):
        log(line)
        raise NonFiniteLoss(epoch + 1, logs["loss"])
    bad = [v.path for v, w in zip(model.weights, model.get_weights()) if not np.isfinite(w).all()]
    if bad:
        log(line)
        raise NonFiniteWeights(epoch + 1, bad)


def _confusion(total):
    """The confusion matrix (rows: true, columns: predicted) of [loss sum, flat counts]."""
    k = int(round(np.sqrt(len(total) - 1)))
    return np.rint(total[1:]).astype(int).reshape(k, k)


def _logs(total):
    """loss, accuracy and UAR of an epoch from [loss sum, confusion matrix]."""
    cm = _confusion(total)
    m = metrics_from_confusion(cm, range(len(cm)))
    return {"loss": float(total[0] / max(m["samples"], 1)), "accuracy": m["accuracy"], "uar": m["uar"]}


def _sync_start(strategy, model, initial_epoch, resume):
    """Every worker starts from the chief's epoch, weights, optimizer state and callback counters."""
    state = distribute.broadcast_json(strategy, {"epoch": int(initial_epoch), "callbacks": resume.restored if resume else None})
    if distribute.worker_count(strategy) > 1:
        distribute.broadcast_weights(strategy, [*model.weights, *model.optimizer.variables])
        if resume is not None and state["callbacks"] is not None and resume.restored is None:
            resume.apply(state["callbacks"])
    return state["epoch"]


def weights_digest(model):
    """sha256 of the model's weights: equal on every worker of one training."""
    import hashlib

    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()
