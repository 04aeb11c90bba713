"""The training loop's compiled steps: up to K training (or evaluation) steps per call, on every replica.

    steps = Steps(model, strategy, classes=6, class_weights=np.ones(6))
    sums = steps.train(((x, y, n), ...), steps.zeros())   # K batches per call (trainer/training/feeder.py makes them)
    train, val = steps.totals(train_sums, val_sums)       # the epoch's one all-reduce and copy to the host

The steps are traced once per number of batches in a call (K, and the epoch's shorter last call),
for any batch size and padded clip length: a trace, and the graph optimisation of its first call, take
seconds (more than an epoch of a small run), so a short last batch or another length does not pay them again.

Each replica sums its own loss and confusion counts (one-hot sums: no op that checks its input on the
device) into a vector [loss sum, counts of (true, predicted)] that stays on its device, and the sums
are all-reduced once per epoch: a training step's only collective is the gradients' all-reduce.
The loss of a global batch of n clips is its (class-weighted) summed loss over n plus the model's own
losses (weight regularisers), as `model.fit` computes it; each replica adds its share, so the
gradients summed over the replicas are those of the global batch.

Mixed precision over several replicas: Keras' LossScaleOptimizer skips a step when the gradients it
is handed are not finite, but it is handed each replica's own, before the all-reduce. So the replicas
first all-reduce how many of them overflowed and, when any did, hand it non-finite gradients on every
replica: every replica (of every worker) skips the step and halves the scale.

No autograph: no step branches or loops on a tensor (the loop over a call's batches is Python's, unrolled),
so converting their source (0.7 CPU-s a process, and a source file left in /tmp by each process killed) buys nothing.

Dropout: the replicas share the layers' seed generators, so `fold_replica_into_seeds` folds the
global replica id into each seed drawn under several replicas: each replica draws its own mask,
reproducibly. One device draws exactly as `model.fit` does.
"""

import keras
import numpy as np
import tensorflow as tf


class Steps:
    def __init__(self, model, strategy, classes, class_weights, watchdog=None):
        self.model, self.strategy, self.classes = model, strategy, classes
        self.watchdog = watchdog  # trainer/training/peers.py: paused while a step is traced, then the first-call allowance
        self.replicas = strategy.num_replicas_in_sync
        self.class_weights = tf.constant(class_weights, tf.float32)
        self.size = 1 + classes * classes  # loss sum, then the flat confusion counts
        self.traced = False  # set while a step is traced: the loop gives the epoch's all-reduce the long allowance
        self.skip_together = self.replicas > 1 and isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        fold_replica_into_seeds(model)
        self.train = self._compile(self._train_step)
        self.evaluate = self._compile(self._eval_step)
        self._reduce = tf.function(self._all_reduce, autograph=False)
        self._zeros = tf.function(self._replica_zeros, autograph=False)

    def zeros(self):
        """Per replica, the sums of no step yet: of the type the steps return (a worker with one replica
        gets a plain tensor back from strategy.run), so that the first call of an epoch does not retrace."""
        return self._zeros()

    def _replica_zeros(self):
        return self.strategy.run(tf.zeros, args=([self.size],))

    def totals(self, *sums):
        """Each of `sums` summed over every replica of every worker, as numpy arrays [loss sum, counts...]:
        one all-reduce and one copy to the host (the wait for the device)."""
        if self.replicas == 1:
            flat = tf.concat(sums, 0).numpy()
        else:
            flat = self._reduce(tuple(sums)).numpy()
        return np.split(flat, len(sums))

    def _all_reduce(self, sums):
        def replica_fn(*parts):
            return tf.distribute.get_replica_context().all_reduce("sum", tf.concat(parts, 0))

        return self.strategy.experimental_local_results(self.strategy.run(replica_fn, args=sums))[0]

    def _compile(self, step):
        def replica_fn(batches, sums):
            for x, y, n in batches:  # unrolled: K steps of one graph, run in one call
                sums = sums + step(x, tf.cast(y, tf.int32), n)
            return sums

        @tf.function(reduce_retracing=True, autograph=False)
        def run(batches, sums):
            self.traced = True  # Python runs here only while tracing
            if self.watchdog is not None:  # which may take long on a busy host
                self.watchdog.pause()
            out = self.strategy.run(replica_fn, args=(batches, sums))
            if self.watchdog is not None:  # the graph's optimisation and first run (its collectives): the longer allowance
                self.watchdog.long_wait()
            return out

        opened = set()

        def call(batches, sums):
            # The first call of K batches traces the step for any batch size and padded length, once: traced for
            # the first batch's shape, the short last batch or the next length would trace (and optimise) it again.
            # Later calls find that trace (tf.function dispatches a call to a trace of a more general type).
            if len(batches) not in opened:
                run.get_concrete_function(tf.nest.map_structure(any_batch_and_length, batches), sums)
                opened.add(len(batches))
            return run(batches, sums)

        return call

    def _extra_losses(self):
        """The model's own losses (regularisers), as `fit` adds them, each replica's share of them."""
        return [keras.ops.sum(keras.ops.cast(loss, "float32")) / self.replicas for loss in self.model.losses]

    def _train_step(self, x, y, n):
        model = self.model
        with tf.GradientTape() as tape:
            probs = model(x, training=True)
            loss_sum = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(y, probs) * tf.gather(self.class_weights, y))
            extra = self._extra_losses()
            loss = keras.ops.sum([loss_sum / n, *extra]) if extra else loss_sum / n
            scaled = model.optimizer.scale_loss(loss)  # mixed precision: LossScaleOptimizer scales
        grads = tape.gradient(scaled, model.trainable_variables)
        if self.skip_together:
            grads = self._overflow_on_any_replica_overflows_all(grads)
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables))  # all-reduces the sum
        return self._sums(y, probs, loss_sum + sum(extra) * n if extra else loss_sum)

    def _eval_step(self, x, y, n):
        probs = self.model(x, training=False)
        loss_sum = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(y, probs))
        extra = self._extra_losses()
        return self._sums(y, probs, loss_sum + sum(extra) * n if extra else loss_sum)

    def _overflow_on_any_replica_overflows_all(self, grads):
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None])
        overflowed = tf.distribute.get_replica_context().all_reduce("sum", 1.0 - tf.cast(finite, tf.float32))
        gate = tf.where(overflowed > 0, float("nan"), 1.0)  # x * 1.0 is x, bit for bit
        return [None if g is None else g * tf.cast(gate, g.dtype) for g in grads]

    def _sums(self, y, probs, loss_sum):
        k = self.classes
        predicted = tf.argmax(probs, -1, output_type=tf.int32)
        counts = tf.reduce_sum(tf.one_hot(y * k + predicted, k * k, dtype=tf.float32), 0)
        return tf.concat([tf.reshape(tf.cast(loss_sum, tf.float32), [1]), counts], 0)


def any_batch_and_length(value):
    """The type of a batch's tensor (or of its per-replica shares) with the batch size and the clip length
    (its first two dimensions) left open: x (batch, frames, features) -> (None, None, features)."""
    spec = tf.type_spec_from_value(value)
    if isinstance(spec, tf.TensorSpec):
        return _open(spec)
    # distributed values (PerReplicaSpec): one spec per replica. tf.distribute exports no accessor of a PerReplicaSpec's
    # per-replica specs (nor the class), and the loop needs a spec of that very type to trace its step once for any batch
    return type(spec)(*map(_open, spec._value_specs))


def _open(spec):
    dims = spec.shape.as_list()
    return tf.TensorSpec([None] * min(2, len(dims)) + dims[2:], spec.dtype)


# Private Keras on purpose: Keras 3 has no public walk over every nested layer (Model.layers does not descend) nor a public
# list of a layer's SeedGenerators (keras.random.SeedGenerator is public, the layer's `_seed_generators` is not), nor a
# hook to fold the replica id into the seeds they give; the loop needs all three so that replicas drop different units.
def fold_replica_into_seeds(model):
    """Every seed generator of `model`'s layers (dropout) folds the global replica id (worker k's
    replicas come after those of workers 0..k-1) into each seed it gives under several replicas.
    Keras lists a layer's seed generators only in `_seed_generators`."""
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for generator in getattr(layer, "_seed_generators", ()):
            if not getattr(generator, "folds_replica_id", False):
                generator.next = _folding(generator.next)
                generator.folds_replica_id = True


def _folding(draw):
    def next(ordered=True):
        seed = draw(ordered)
        ctx = tf.distribute.get_replica_context()
        if ctx is None or ctx.num_replicas_in_sync == 1:
            return seed
        return tf.random.experimental.stateless_fold_in(seed, ctx.replica_id_in_sync_group)

    return next
