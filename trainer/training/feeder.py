"""Feeds the loop's steps: each global batch of a generator cut into one share per replica, read ahead
by a thread pool and copied to its replica's device while the steps before it run.

    feeder = Feeder(strategy, workers=2, per_execution=4, log=print)
    feeder.whole_shares(train_gen, "training")      # no batch may leave a replica without rows
    sums = feeder.run(train_gen, steps.train, steps.zeros(), on_batch=lambda done, total: ...)
    feeder.close()

A worker reads only the clips of its own replicas' shares. Each call of the step takes up to
`per_execution` batches (K steps in one call, as `fit`'s steps_per_execution); the next calls'
batches are read and on their devices before they are needed.

A batch of fewer clips than replicas would give a replica a share of zero rows, which cuDNN kernels
may abort on: a generator with `require_rows` (FixedVideoFacenetGenerator) merges such a batch into
another; any other generator's such training batches are left out (the log says so), while such an
evaluation batch is a DataError naming the generator: evaluation scores every clip or none.
"""

import collections
from concurrent.futures import ThreadPoolExecutor

import tensorflow as tf

from trainer.errors import DataError
from trainer.training import distribute


class Feeder:
    def __init__(self, strategy, workers=1, per_execution=1, log=print):
        self.strategy, self.per_execution, self.log = strategy, per_execution, log
        self.replicas = strategy.num_replicas_in_sync
        self.local = distribute.local_replica_ids(strategy)
        if self.replicas > 1:
            self.devices = list(strategy.extended.worker_devices)  # this worker's, in the order of self.local
        else:
            gpus = tf.config.list_logical_devices("GPU")
            self.devices = [gpus[0].name if gpus else "/device:CPU:0"]
        self.pool = ThreadPoolExecutor(max(1, workers))
        self.left_out = {}

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)

    def whole_shares(self, gen, name, evaluation=False):
        """Make every batch of `gen` hold at least one clip per replica, saying how in the log. An
        evaluation generator that cannot (no `require_rows`) is a DataError: none of its clips is dropped."""
        if self.replicas == 1:
            return
        merged = gen.require_rows(self.replicas) if hasattr(gen, "require_rows") else []
        if merged:
            self.log(f"Batches ({name}): the short batch of {', '.join(map(str, merged))} clip(s) is merged into another, "
                     f"each epoch: each of the {self.replicas} replicas needs a row of every batch.")
        short = sorted({gen.batch_rows(i) for i in range(len(gen)) if gen.batch_rows(i) < self.replicas})
        if evaluation and short:
            raise DataError(f"The {name} generator {type(gen).__name__} has batch(es) of {', '.join(map(str, short))} clip(s), "
                            f"fewer than the {self.replicas} replicas, and cannot merge them into another (it has no require_rows): "
                            f"its clips would be left out of the {name} scores. Give it require_rows(rows), as "
                            "FixedVideoFacenetGenerator has, or a batch size that leaves no such batch.")

    def usable(self, gen, name="data"):
        """The indices of `gen`'s batches with a row for every replica; DataError when none has."""
        indices = [i for i in range(len(gen)) if gen.batch_rows(i) >= self.replicas]
        if len(indices) < len(gen) and self.left_out.get(name) != len(gen) - len(indices):
            self.left_out[name] = len(gen) - len(indices)
            self.log(f"Batches ({name}): {len(gen) - len(indices)} batch(es) of fewer clips than the {self.replicas} replicas "
                     "left out (a replica would get no rows).")
        if not indices:
            raise DataError(f"The {name} data has no batch of at least {self.replicas} clips, one per replica. Received: "
                            f"batches of {sorted({gen.batch_rows(i) for i in range(len(gen))})} clip(s)")
        return indices

    def run(self, gen, step, sums, on_batch=None, name="data"):
        """`sums = step(batches, sums)` over every usable batch of `gen`, K batches per call; the last sums."""
        indices = self.usable(gen, name)
        k = min(self.per_execution, len(indices))  # K clamped to the epoch's steps
        ahead = 2 * k + 2
        pending = collections.deque(self.pool.submit(self._load, gen, i) for i in indices[:ahead])
        submitted = len(pending)
        done = 0
        while done < len(indices):
            group = tuple(pending.popleft().result() for _ in range(min(k, len(indices) - done)))
            for i in indices[submitted : done + len(group) + ahead]:
                pending.append(self.pool.submit(self._load, gen, i))
            submitted = max(submitted, min(len(indices), done + len(group) + ahead))
            sums = step(group, sums)
            done += len(group)
            if on_batch is not None:
                on_batch(done, len(indices))
        return sums

    def _load(self, gen, index):
        """Batch `index` as (x, y, n) on the devices: this worker's shares, each on its replica's device."""
        shares = {r: gen.share(index, r, self.replicas) for r in self.local}
        n = tf.constant(float(gen.batch_rows(index)), tf.float32)
        if self.replicas == 1:
            with tf.device(self.devices[0]):
                x, y = shares[self.local[0]]
                return tf.constant(x), tf.constant(y), n

        def on_device(part):
            def value(ctx):
                local = self.local.index(ctx.replica_id_in_sync_group)
                with tf.device(self.devices[local]):
                    return tf.constant(shares[ctx.replica_id_in_sync_group][part])
            return self.strategy.experimental_distribute_values_from_function(value)

        return on_device(0), on_device(1), n
