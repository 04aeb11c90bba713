"""The training loop: one code path for one device, N devices of a host and N hosts.

    history = fit(model, strategy, train_gen, val_gen, epochs=50, callbacks=[...], class_weight={0: 1.2, ...})
    history.stopped_by_signal      # a worker was asked to stop (SIGTERM): the run is resumable

Keras 3's `model.fit` cannot run under MultiWorkerMirroredStrategy (keras-team/keras 20585), so
the loop is ours: a `tf.function` step that calls `strategy.run`, with the Keras callbacks driven
as `fit` drives them (train begin, epoch begin/end, train end; logs named as `fit` names them:
loss, accuracy, uar, val_loss, val_accuracy, val_uar). Each global batch of the generator's plan
(the same on every worker: same data, same seed) is cut into one share per replica, and a
worker reads only the clips of its own replicas' shares. The loss is the sum over the global
batch divided by its size, so gradients all-reduced by sum are those of the global batch.

At the start every worker takes the chief's resumed state (weights, optimizer, epoch, the
callbacks' counters); at each epoch end the workers agree on stopping, so none is left waiting
in a collective for a peer that stopped. An epoch whose training loss is not finite raises
NonFiniteLoss before any callback sees it, so no checkpoint or backup holds its weights.
"""

import time
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import tensorflow as tf

from trainer.errors import NonFiniteLoss
from trainer.results.metrics import metrics_from_confusion
from trainer.training import distribute


class History(keras.callbacks.History):
    stopped_by_signal = False


def fit(model, strategy, train_gen, val_gen, epochs, callbacks, class_weight=None, resume=None, stop=None,
        workers=1, log=print):
    """Train `model` (built and compiled under `strategy`) for `epochs`; returns the History.
    `resume` is the ResumeState: the chief's `restored` state is `apply`-ed on the others;
    `stop` is the GracefulStop callback whose `requested` flag every worker agrees on."""
    history = History()
    cbs = keras.callbacks.CallbackList([*callbacks, history], model=model, epochs=epochs, steps=len(train_gen), verbose=0)
    classes = model.output_shape[-1]
    weights = np.ones(classes, np.float32)
    for c, w in (class_weight or {}).items():
        weights[c] = w
    steps = _Steps(model, strategy, classes, weights)
    with strategy.scope():
        model.optimizer.build(model.trainable_variables)
    model.stop_training = False
    model._initial_epoch = None
    cbs.on_train_begin()
    start = _sync_start(strategy, model, getattr(model, "_initial_epoch", None) or 0, resume)
    feeder = _Feeder(strategy, workers)
    logs = {}
    progress = next((c.batch_done for c in callbacks if hasattr(c, "batch_done")), None)  # StatusCallback's heartbeat
    try:
        for epoch in range(start, epochs):
            t0 = time.monotonic()
            cbs.on_epoch_begin(epoch)
            train = feeder.run(train_gen, steps.train, on_batch=progress)
            val = feeder.run(val_gen, steps.evaluate)
            logs = {**_logs(train), **{f"val_{k}": v for k, v in _logs(val).items()}}
            line = f"Epoch {epoch + 1}/{epochs} - {time.monotonic() - t0:.0f}s - " + " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
            if not np.isfinite(logs["loss"]):  # before any callback saves this epoch's (non-finite) weights
                log(line)
                raise NonFiniteLoss(epoch + 1, logs["loss"])  # the same loss on every worker: all stop here
            cbs.on_epoch_end(epoch, logs)
            train_gen.on_epoch_end()
            log(line)
            stop_now, by_signal = distribute.agree(strategy, [model.stop_training, stop is not None and stop.requested])
            if by_signal:
                history.stopped_by_signal = True
            if stop_now:
                break
    finally:
        feeder.close()
    history.weights_sha256 = weights_digest(model)  # the last epoch's, before EarlyStopping restores the best
    cbs.on_train_end(logs)
    return history


class _Steps:
    """The compiled train and evaluation steps; each returns [loss sum, confusion matrix (flat)]
    summed over every replica of every worker."""

    def __init__(self, model, strategy, classes, class_weights):
        self.model, self.strategy, self.classes = model, strategy, classes
        self.class_weights = tf.constant(class_weights, tf.float32)
        self.train = self._compile(self._train_replica)
        self.evaluate = self._compile(self._eval_replica)

    def _compile(self, replica_fn):
        @tf.function(reduce_retracing=True)
        def step(x, y, n):
            out = self.strategy.run(replica_fn, args=(x, y, n))
            return self.strategy.experimental_local_results(out)[0]

        return step

    def _counts(self, y, probs, loss_sum):
        cm = tf.math.confusion_matrix(y, tf.argmax(probs, -1, output_type=tf.int32), self.classes, dtype=tf.float32)
        ctx = tf.distribute.get_replica_context()
        return ctx.all_reduce("sum", tf.concat([tf.reshape(loss_sum, [1]), tf.reshape(cm, [-1])], 0))

    def _train_replica(self, x, y, n):
        model = self.model
        with tf.GradientTape() as tape:
            probs = model(x, training=True)
            weights = tf.gather(self.class_weights, y)
            loss_sum = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(y, probs) * weights)
            scaled = model.optimizer.scale_loss(loss_sum / n)  # mixed precision: LossScaleOptimizer scales
        grads = tape.gradient(scaled, model.trainable_variables)
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables))  # all-reduces the sum
        return self._counts(y, probs, loss_sum)

    def _eval_replica(self, x, y, n):
        probs = self.model(x, training=False)
        return self._counts(y, probs, tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(y, probs)))


class _Feeder:
    """Runs a step over a generator's batches, each cut into per-replica shares; a thread pool
    reads the next batches' shares (this worker's only) while the current step runs."""

    AHEAD = 4

    def __init__(self, strategy, workers):
        self.strategy = strategy
        self.replicas = strategy.num_replicas_in_sync
        self.local = distribute.local_replica_ids(strategy)
        self.pool = ThreadPoolExecutor(max(1, workers))

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _load(self, gen, index):
        return {r: gen.share(index, r, self.replicas) for r in self.local}

    def run(self, gen, step, on_batch=None):
        pending = [self.pool.submit(self._load, gen, i) for i in range(min(self.AHEAD, len(gen)))]
        total = None
        for index in range(len(gen)):
            shares = pending.pop(0).result()
            if index + self.AHEAD < len(gen):
                pending.append(self.pool.submit(self._load, gen, index + self.AHEAD))
            x = self._distribute(shares, 0)
            y = self._distribute(shares, 1)
            out = step(x, y, tf.constant(float(gen.batch_rows(index)), tf.float32))
            total = out if total is None else total + out
            if on_batch is not None:
                on_batch(index + 1, len(gen))
        return total.numpy()

    def _distribute(self, shares, part):
        if self.replicas == 1:
            return tf.constant(shares[self.local[0]][part])
        return self.strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(shares[ctx.replica_id_in_sync_group][part]))


def _logs(total):
    """loss, accuracy and UAR of an epoch from [loss sum, confusion matrix]."""
    k = int(round(np.sqrt(len(total) - 1)))
    m = metrics_from_confusion(np.rint(total[1:]).reshape(k, k), range(k))
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
