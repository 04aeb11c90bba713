"""Which devices and hosts one training uses: tf.distribute's strategy for `train.distribute`.

    cluster = read_cluster()               # the TF_CONFIG cluster (None without one), checked
    strategy = choose_strategy("auto", cluster)
    with strategy.scope(): model = ...     # build and compile under it
    strategy.num_replicas_in_sync          # replicas of every worker; train.batch_size is per replica

`auto`: MultiWorkerMirroredStrategy when TF_CONFIG names a cluster, else MirroredStrategy over
every visible GPU when there are two or more, else the default (one device). `mirrored`:
MirroredStrategy over every GPU, or over the CPU devices where there is none. `multi_worker`:
the TF_CONFIG cluster, which must be set. `off`: one device.

Worker 0 is the chief: it alone writes the run's shared files. `broadcast_json` and
`broadcast_weights` give every worker the chief's values (its resumed state), `agree` an
all-reduced flag, so that every worker takes the same decisions at the same epoch.

FACENET_LOGICAL_CPUS=N splits this machine's CPU into N logical devices before TensorFlow
starts, so that a machine without GPUs can run the mirrored code path (the tests do).
"""

import hashlib
import json
import os
from pathlib import Path

from trainer.errors import ConfigError, DataError


def configure_devices():
    """Apply FACENET_LOGICAL_CPUS; call before anything initialises TensorFlow's devices."""
    import tensorflow as tf

    wanted = int(os.environ.get("FACENET_LOGICAL_CPUS") or 0)
    if wanted > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * wanted)


def read_cluster(environ=None):
    """{"workers": [host:port, ...], "index": k} from TF_CONFIG, or None when it is unset."""
    raw = (environ if environ is not None else os.environ).get("TF_CONFIG", "").strip()
    if not raw:
        return None
    expected = 'expected {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": k}}'
    try:
        spec = json.loads(raw)
        workers, task = spec["cluster"]["worker"], spec["task"]
        index = task["index"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"TF_CONFIG is not a cluster description: {expected}. Received: {raw[:200]!r}") from None
    if set(spec["cluster"]) != {"worker"} or task.get("type") != "worker":
        raise ConfigError(f"TF_CONFIG: only workers are supported (worker 0 is the chief): {expected}. Received: {raw[:200]!r}")
    if not isinstance(workers, list) or not workers or not all(isinstance(w, str) and ":" in w for w in workers):
        raise ConfigError(f"TF_CONFIG cluster.worker must list host:port addresses. Received: {workers!r}")
    if not isinstance(index, int) or not 0 <= index < len(workers):
        raise ConfigError(f"TF_CONFIG task.index must be 0..{len(workers) - 1}. Received: {index!r}")
    return {"workers": workers, "index": index}


HEARTBEAT_MAX_SECONDS = 30  # TensorFlow's default, 10 s, ended every worker when one stalled that long


def choose_strategy(mode, cluster=None, peer_timeout=None):
    """The strategy of `train.distribute` (see above). A multi-worker strategy has no per-collective
    timeout: TensorFlow documents it as a debugging aid, and each collective would leave a thread
    sleeping out the timeout; trainer/training/peers.py's watchdog bounds the wait for a peer instead.
    TensorFlow's own heartbeat between the workers gets `peer_timeout` seconds (train.collective_timeout), at most
    HEARTBEAT_MAX_SECONDS: it is what finds a worker that died during the set-up, before any collective fails."""
    import tensorflow as tf

    if mode == "multi_worker" and cluster is None:
        raise ConfigError("train.distribute is multi_worker but TF_CONFIG is not set: start the workers with "
                          "`fab -H <cluster> deploy-full` (inventory `clusters:`), or set train.distribute to auto.")
    if cluster is not None and mode in ("auto", "multi_worker"):
        if peer_timeout:
            _coordinate(len(cluster["workers"]), min(peer_timeout, HEARTBEAT_MAX_SECONDS))
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if mode == "off" or (mode == "auto" and len(gpus) < 2):
        return tf.distribute.get_strategy()
    devices = gpus or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices)


def _coordinate(workers, seconds):
    """TensorFlow's coordination service, set up as MultiWorkerMirroredStrategy would (it leaves one set up
    before it alone), but with a heartbeat timeout of `seconds`: its default, 10 s, ended every worker of a
    run when one stalled that long (swapping, a busy disk), whatever train.collective_timeout said."""
    from tensorflow.python.distribute import collective_all_reduce_strategy as mwms
    from tensorflow.python.eager import context

    jobs = [mwms.coordination_config_pb2.CoordinatedJob(name="worker", num_tasks=workers)]
    context.context().configure_coordination_service(service_type="standalone", service_leader="/job:worker/replica:0/task:0",
                                                     heartbeat_timeout_in_ms=int(seconds * 1000), coordinated_jobs=jobs)


def describe(strategy, batch_size, cluster=None):
    """What status.json and environment.json record about the distribution."""
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync
    name = ("MultiWorkerMirroredStrategy" if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            else "MirroredStrategy" if isinstance(strategy, tf.distribute.MirroredStrategy) else "one device")
    devices = list(strategy.extended.worker_devices) if name != "one device" else ["default"]
    info = {"strategy": name, "replicas": replicas, "devices": devices,
            "batch_size_per_replica": batch_size, "global_batch_size": batch_size * replicas}
    if cluster is not None and name == "MultiWorkerMirroredStrategy":
        info.update(workers=cluster["workers"], worker=cluster["index"], chief=cluster["index"] == 0)
    return info


def worker_index(strategy):
    """This process's worker number (0, the chief, without a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(resolver.task_id or 0) if resolver is not None and resolver.task_type else 0


def local_replica_ids(strategy):
    """Global replica ids of this worker's devices (every worker has the same number of devices)."""
    if strategy.num_replicas_in_sync == 1:
        return [0]
    local = len(strategy.extended.worker_devices)
    first = worker_index(strategy) * local
    return list(range(first, first + local))


_REDUCERS = {}  # (strategy, from_chief, number of values) -> compiled all-reduce: traced once, not every epoch


def _all_reduce_sum(strategy, values, from_chief):
    """Sum of `values` over every replica; with `from_chief` only replica 0 contributes (a broadcast)."""
    import tensorflow as tf

    key = (id(strategy), from_chief, len(values))
    if key not in _REDUCERS:
        def replica_fn(*vals):
            ctx = tf.distribute.get_replica_context()
            keep = tf.cast(tf.equal(ctx.replica_id_in_sync_group, 0), tf.float32) if from_chief else 1.0
            return ctx.all_reduce("sum", [v * keep for v in vals])

        @tf.function(reduce_retracing=True, autograph=False)
        def reduce(*vals):
            return [strategy.experimental_local_results(o)[0] for o in strategy.run(replica_fn, args=vals)]

        _REDUCERS[key] = reduce
    return [o.numpy() for o in _REDUCERS[key](*(tf.constant(v, tf.float32) for v in values))]


def broadcast_json(strategy, value):
    """The chief's `value` (any JSON) on every worker; without a cluster, `value` itself."""
    import numpy as np

    if worker_count(strategy) == 1:
        return value
    raw = np.frombuffer(json.dumps(value).encode(), np.uint8)
    (size,) = _all_reduce_sum(strategy, [np.array([len(raw)], np.float32)], from_chief=True)
    data = np.zeros(int(size[0]), np.float32)
    data[: min(len(raw), len(data))] = raw[: len(data)]
    (data,) = _all_reduce_sum(strategy, [data], from_chief=True)
    return json.loads(bytes(data.astype(np.uint8)).decode())


def broadcast_weights(strategy, variables):
    """Give every worker the chief's values of `variables` (after the chief restored a backup)."""
    if worker_count(strategy) == 1:
        return
    values = _all_reduce_sum(strategy, [v.numpy() for v in variables], from_chief=True)
    for var, value in zip(variables, values):
        var.assign(value.astype(var.dtype))


def agree(strategy, flags):
    """Each flag true if it is true on any worker: the same decision everywhere."""
    if worker_count(strategy) == 1:
        return [bool(f) for f in flags]
    (summed,) = _all_reduce_sum(strategy, [[float(bool(f)) for f in flags]], from_chief=False)
    return [bool(s > 0) for s in summed]


def worker_count(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return 1
    return len(resolver.cluster_spec().as_dict().get("worker", [])) or 1


def same_data_as_the_chief(strategy, prepared, distribution):
    """Every worker must plan the same batches: same files (by name), labels, lengths, split and
    normalisation as the chief. A worker whose data differs fails the run on every worker."""
    import numpy as np

    digest = hashlib.sha256()
    for side in ("train", "val", "test"):
        for path in prepared.split.get(side) or []:
            e = prepared.entries[path]
            digest.update(f"{side}|{Path(path).name}|{e.emotion}|{e.frames}\n".encode())
    for key in ("mean", "std"):
        digest.update(np.asarray(prepared.stats[key], np.float32).tobytes())
    mine = digest.hexdigest()
    chiefs = broadcast_json(strategy, mine)
    (differs,) = agree(strategy, [mine != chiefs])
    if differs:
        who = "this worker's" if mine != chiefs else "another worker's"
        raise DataError(f"Worker {distribution['worker']}: {who} data differs from the chief's (files, labels, frame counts, "
                        "split or normalisation). Every worker needs the same data: `fab -H <cluster> deploy-full` syncs every host.")
