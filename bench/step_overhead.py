"""Samples/s of the training loop's own step for train.steps_per_execution K = 1, 4 and 16, on one
device and on 2 devices (MirroredStrategy), in one run: how much the host's work per call costs.

    python bench/step_overhead.py [--batch-size 32] [--frames 100] [--units 128] [--batches 64]

On a machine with GPUs: one GPU, then two (one GPU split into 2 logical GPUs when it has only one,
--gpu-memory-mb each); without, this CPU split into 2 logical devices, both sharing the same cores,
so the 2-device figures show the cost of the distribution machinery, not a speed-up. The model is
the full config's (about 0.7M parameters at 128 units; mixed_float16 on a GPU) unless --units says
otherwise; the batches are random clips of --frames frames, --batch-size per device, read from RAM
through trainer/training/feeder.py (a thread pool, copies to the devices ahead of the step). Each setting is
traced and warmed up first, then timed over --batches batches up to the device's last result.
Without a GPU the defaults are smaller (32 units, 20 frames, 8 clips per device).
"""

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def split_devices(gpu_memory_mb):
    """Two logical devices of the first GPU (when there is exactly one) or of the CPU; their kind."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) == 1:
        tf.config.set_logical_device_configuration(gpus[0], [tf.config.LogicalDeviceConfiguration(memory_limit=gpu_memory_mb)] * 2)
    elif not gpus:
        tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    return "GPU" if gpus else "CPU"


def samples_per_second(strategy, model_cfg, args, mixed, per_call_values, classes=6):
    import keras
    import numpy as np

    from trainer.config import DEFAULTS
    from trainer.training.estimate import _Batches
    from trainer.training.feeder import Feeder
    from trainer.training.model import build_model, compile_model
    from trainer.training.steps import Steps

    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    with strategy.scope():
        model = compile_model(build_model(model_cfg, classes, 512), DEFAULTS["train"], classes)
        model.optimizer.build(model.trainable_variables)
    steps = Steps(model, strategy, classes, np.ones(classes, np.float32))
    rows = args.batch_size * strategy.num_replicas_in_sync
    rates = {}
    for k in per_call_values:
        feeder = Feeder(strategy, workers=2, per_execution=k, log=lambda line: None)
        timed = k * math.ceil(args.batches / k)
        steps.totals(feeder.run(_Batches(2 * k, rows, args.frames, 512, classes), steps.train, steps.zeros()))  # traced, warm
        batches = _Batches(timed, rows, args.frames, 512, classes)
        t0 = time.perf_counter()
        steps.totals(feeder.run(batches, steps.train, steps.zeros()))  # waits for the device's last step
        rates[k] = timed * rows / (time.perf_counter() - t0)
        feeder.close()
    return rates, model.count_params()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, help="clips per device (default 32 on a GPU, 8 on the CPU)")
    ap.add_argument("--frames", type=int, help="frames per clip (default 100 on a GPU, 20 on the CPU)")
    ap.add_argument("--units", type=int, help="model.units and model.head_units (default 128 on a GPU, 32 on the CPU)")
    ap.add_argument("--batches", type=int, help="timed batches per setting (default 256 on a GPU, 48 on the CPU)")
    ap.add_argument("--gpu-memory-mb", type=int, default=16000, help="memory of each logical GPU when one GPU is split in two")
    args = ap.parse_args()
    kind = split_devices(args.gpu_memory_mb)
    import tensorflow as tf

    from trainer.config import DEFAULTS

    gpu = kind == "GPU"
    for name, on_gpu, on_cpu in (("batch_size", 32, 8), ("frames", 100, 20), ("units", 128, 32), ("batches", 256, 48)):
        if getattr(args, name) is None:
            setattr(args, name, on_gpu if gpu else on_cpu)
    model_cfg = {**DEFAULTS["model"], "units": args.units, "head_units": args.units}
    devices = [d.name for d in tf.config.list_logical_devices(kind)][:2]
    per_call = (1, 4, 16)
    results = {}
    for label, strategy in (("1 device", tf.distribute.get_strategy()), ("2 devices", tf.distribute.MirroredStrategy(devices))):
        results[label], params = samples_per_second(strategy, model_cfg, args, gpu, per_call)
    print(f"\n{kind}: {', '.join(devices)}; model {params:,} parameters ({args.units} units), {'mixed_float16' if gpu else 'float32'}; "
          f"{args.batch_size} clips of {args.frames} frames per device; {args.batches} batches timed per setting")
    print(f"{'setup':<12}" + "".join(f"{f'K={k} samples/s':>18}" for k in per_call) + f"{'K=16 / K=1':>12}")
    for label, rates in results.items():
        print(f"{label:<12}" + "".join(f"{rates[k]:>18.0f}" for k in per_call) + f"{rates[16] / rates[1]:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
