"""Which devices one training uses: tf.distribute's strategy for `train.distribute`.

    strategy = choose_strategy("auto")     # all GPUs of this host when there are several, else one device
    with strategy.scope(): model = ...     # build and compile under it
    strategy.num_replicas_in_sync          # replicas; train.batch_size is per replica

`auto`: MirroredStrategy over every visible GPU when there are two or more, else the default
(one device). `mirrored`: MirroredStrategy over every GPU, or over the CPU devices where there
is none. `off`: one device.

FACENET_LOGICAL_CPUS=N splits this machine's CPU into N logical devices before TensorFlow
starts, so that a machine without GPUs can run the mirrored code path (the tests do).
"""

import os


def configure_devices():
    """Apply FACENET_LOGICAL_CPUS; call before anything initialises TensorFlow's devices."""
    import tensorflow as tf

    wanted = int(os.environ.get("FACENET_LOGICAL_CPUS") or 0)
    if wanted > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * wanted)


def choose_strategy(mode):
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if mode == "off" or (mode == "auto" and len(gpus) < 2):
        return tf.distribute.get_strategy()
    devices = gpus or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices)


def describe(strategy, batch_size):
    """What status.json and environment.json record about the distribution."""
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync
    mirrored = isinstance(strategy, tf.distribute.MirroredStrategy)
    devices = list(strategy.extended.worker_devices) if mirrored else ["default"]
    return {"strategy": "MirroredStrategy" if mirrored else "one device", "replicas": replicas, "devices": devices,
            "batch_size_per_replica": batch_size, "global_batch_size": batch_size * replicas}
