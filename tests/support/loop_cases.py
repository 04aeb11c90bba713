"""Cases of the training loop (trainer/training/loop.py), run by tests/trainer/test_loop.py in one fresh process per
device configuration, since the devices are fixed when TensorFlow starts: the cases named run one after the other
and one JSON line maps each to its result (a case that raised gives {"case_error": its traceback}).

    python tests/support/loop_cases.py fit_equal regularizer                    # one device
    FACENET_LOGICAL_CPUS=2 python tests/support/loop_cases.py overflow dropout  # MirroredStrategy over 2 logical CPUs
    TF_CONFIG=... python tests/support/loop_cases.py overflow threads           # one of 2 loopback workers

Only `loop.fit` and the project's own pieces are used: the model, the strategies, the callbacks. A case leaves the
process as it found it for the next (run_cases resets the precision policy and the probe's record; a case that
patches TensorFlow undoes it), and all share the process's one strategy, as a training does (a process can set up
MultiWorkerMirroredStrategy once).
"""

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trainer.training import distribute  # noqa: E402

distribute.configure_devices()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from trainer.config import DEFAULTS  # noqa: E402
from trainer.errors import NonFiniteTraining  # noqa: E402
from trainer.training import loop  # noqa: E402
from trainer.training.model import build_model, compile_model  # noqa: E402

DIM, CLASSES = 16, 6


class Batches(keras.utils.PyDataset):
    """In-memory clips cut into batches in order: the loop's generator protocol (share, batch_rows)
    and a PyDataset for model.fit."""

    def __init__(self, clips, labels, batch_size):
        super().__init__()
        self.clips, self.labels = clips, np.asarray(labels, np.int32)
        self.batches = [np.arange(i, min(i + batch_size, len(clips))) for i in range(0, len(clips), batch_size)]
        self.reads = 0

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return self.share(index, 0, 1)

    def batch_rows(self, index):
        return len(self.batches[index])

    def share(self, index, part, parts):
        self.reads += 1
        idx = self.batches[index]
        rows = np.array_split(idx, parts)[part]
        x = np.zeros((len(rows), max(len(self.clips[i]) for i in idx), DIM), np.float32)
        for row, i in enumerate(rows):
            x[row, : len(self.clips[i])] = self.clips[i]
        return x, self.labels[rows]

    def on_epoch_end(self):
        pass


def clips(n, seed=0, lengths=(3, 9)):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(int(rng.integers(*lengths)), DIM)).astype(np.float32) for _ in range(n)], rng.integers(0, CLASSES, n)


class Probe(keras.layers.Layer):
    """Identity; while traced, records in which graph it was called (training or not), and with
    check_rows adds an op that fails on a share of zero rows."""

    calls = []

    def __init__(self, check_rows=False, **kwargs):
        super().__init__(**kwargs)
        self.check_rows = check_rows

    def call(self, x, training=False):
        if not tf.executing_eagerly():
            Probe.calls.append((tf.compat.v1.get_default_graph(), bool(training)))
        if self.check_rows:
            tf.debugging.assert_positive(tf.shape(x)[0], message="a replica was fed a share of zero rows")
        return x


def project_model(dropout=0.3, probe=None, units=8):
    base = build_model({**DEFAULTS["model"], "units": units, "head_units": units, "dropout": dropout}, CLASSES, DIM)
    if probe is None:
        return base
    inputs = keras.Input((None, DIM))
    return keras.Model(inputs, base(probe(inputs)))


_strategy = []  # the process's one strategy, made by the first case that asks


def strategy_of_case():
    if not _strategy:
        cluster = distribute.read_cluster()
        mode = "multi_worker" if cluster else "mirrored" if int(os.environ.get("FACENET_LOGICAL_CPUS") or 0) > 1 else "off"
        _strategy.append(distribute.choose_strategy(mode, cluster))
    return _strategy[0]


def digest(model):
    return hashlib.sha256(b"".join(np.ascontiguousarray(w).tobytes() for w in model.get_weights())).hexdigest()


def replica_copies(variable, strategy):
    """Each device's copy of a (mirrored) variable, as numpy arrays."""
    value = variable.value if hasattr(variable, "value") and not callable(variable.value) else variable
    return [np.asarray(v) for v in strategy.experimental_local_results(value)]


def case_fit_equal():
    """One device: the loop's weights after 6 steps equal model.fit's (class weights, dropout,
    mixed_float16), and 21 padded lengths trace the step a bounded number of times."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    x, y = clips(48, seed=1)
    weights = {0: 1.5, 1: 0.5, 2: 2.0, 3: 1.0, 4: 0.8, 5: 1.2}
    strategy = strategy_of_case()
    out = {}
    keras.utils.set_random_seed(7)
    reference = compile_model(project_model(), DEFAULTS["train"], CLASSES)
    history = reference.fit(Batches(x, y, 8), epochs=1, shuffle=False, class_weight=weights, verbose=0)
    out["fit_loss"] = history.history["loss"][-1]
    for k in (1, 3):
        keras.utils.set_random_seed(7)
        model = compile_model(project_model(), DEFAULTS["train"], CLASSES)
        h = loop.fit(model, strategy, Batches(x, y, 8), Batches(x[:8], y[:8], 8), 1, [], class_weight=weights, log=lambda s: None,
                     steps_per_execution=k)
        out[f"equal_k{k}"] = all(np.array_equal(a, b) for a, b in zip(model.get_weights(), reference.get_weights()))
        out[f"loss_k{k}"] = h.history["loss"][-1]
    keras.mixed_precision.set_global_policy("float32")
    lengths = np.arange(3, 24)  # 21 batches, each padded to another length
    rng = np.random.default_rng(2)
    x = [rng.normal(size=(int(n), DIM)).astype(np.float32) for n in lengths for _ in range(2)]
    Probe.calls.clear()
    model = compile_model(project_model(probe=Probe()), DEFAULTS["train"], CLASSES)
    loop.fit(model, strategy, Batches(x, rng.integers(0, CLASSES, len(x)), 2), Batches(x[:4], [0, 1, 2, 3], 2), 2, [], log=lambda s: None)
    out["train_traces"] = sum(training for _, training in Probe.calls)
    return out


def case_regularizer():
    """One device: a model with weight regularisers trains as model.fit trains it, its loss included."""
    x, y = clips(48, seed=3, lengths=(6, 7))  # one length: model.fit takes the shape of its first batches

    def make():
        keras.utils.set_random_seed(5)
        inputs = keras.Input((None, DIM))
        h = keras.layers.GlobalAveragePooling1D()(keras.layers.Masking(0.0)(inputs))
        h = keras.layers.Dense(8, activation="relu", kernel_regularizer=keras.regularizers.L2(0.05))(h)
        model = keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax", kernel_regularizer=keras.regularizers.L1(0.01))(h))
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
        return model

    reference = make()
    history = reference.fit(Batches(x, y, 8), epochs=1, shuffle=False, verbose=0)
    model = make()
    h = loop.fit(model, strategy_of_case(), Batches(x, y, 8), Batches(x[:8], y[:8], 8), 1, [], log=lambda s: None)
    return {"equal": all(np.array_equal(a, b) for a, b in zip(model.get_weights(), reference.get_weights())),
            "max_difference": max(float(np.abs(a - b).max()) for a, b in zip(model.get_weights(), reference.get_weights())),
            "fit_loss": history.history["loss"][-1], "loop_loss": h.history["loss"][-1]}


def case_overflow():
    """Mixed precision over 2 replicas: a step whose gradients overflow on replica 0, then one where
    they overflow on replica 1 (a clip of a class weighted 1000 in that replica's share); after each,
    what every replica holds."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    strategy = strategy_of_case()
    keras.utils.set_random_seed(3)
    with strategy.scope():
        model = project_model(dropout=0.0)
        model.compile(optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-3)), loss="sparse_categorical_crossentropy")
    x, _ = clips(4, seed=4)
    before = [np.array(w) for w in model.get_weights()]
    report = []
    for bad in (0, 1):
        y = np.array([0, 1, 2, 3])
        y[2 * bad] = 5  # rows 0-1 are replica 0's share, rows 2-3 replica 1's
        loop.fit(model, strategy, Batches(x, y, 4), Batches(x, [0, 1, 2, 3], 4), 1, [], class_weight={5: 1000.0}, log=lambda s: None)
        copies = [replica_copies(v, strategy) for v in model.trainable_variables]
        report.append({
            "bad_replica": bad,
            "finite": all(np.isfinite(c).all() for cs in copies for c in cs),
            "replicas_identical": all(all(np.array_equal(cs[0], c) for c in cs) for cs in copies),
            "unchanged": all(np.array_equal(a, b) for a, b in zip(before, model.get_weights())),
            "scale": [float(s) for s in replica_copies(model.optimizer.dynamic_scale, strategy)],
            "iterations": int(model.optimizer.iterations.numpy()),
            "digest": digest(model),
        })
    return {"steps": report}


def case_dropout():
    """The weights after one step on one clip: on one device, or on 2 replicas each given that same
    clip (identical dropout masks on both replicas make both equal); then the same again."""
    strategy = strategy_of_case()
    x, y = clips(1, seed=6)
    replicas = strategy.num_replicas_in_sync
    digests = []
    for _ in range(2):
        keras.utils.set_random_seed(11)
        with strategy.scope():
            model = compile_model(project_model(dropout=0.5), DEFAULTS["train"], CLASSES)
        same = Batches(x * replicas, np.repeat(y, replicas), replicas)
        loop.fit(model, strategy, same, same, 1, [], log=lambda s: None)
        digests.append(digest(model))
    return {"replicas": replicas, "digests": digests}


def case_per_execution():
    """2 replicas: the weights after 5 steps (dropout on) run 1 or 2 per call (2, 2, then a short last call of 1), and
    where the batches were put; over both fits, the all-reduces made per training and per evaluation step (counted while
    the steps are traced) and whether an Assert op is in a traced step."""
    strategy = strategy_of_case()
    x, y = clips(20, seed=10)
    out = {}
    with counting_all_reduces() as counts:
        for k in (1, 2):
            keras.utils.set_random_seed(12)
            built = len(Probe.calls)
            with strategy.scope():
                model = compile_model(project_model(probe=Probe()), DEFAULTS["train"], CLASSES)
            del Probe.calls[built:]  # Keras' own scratch graphs of the build: no step of the loop's
            loop.fit(model, strategy, Batches(x, y, 4), Batches(x[:4], y[:4], 4), 1, [], log=lambda s: None, steps_per_execution=k)
            out[f"digest_k{k}"] = digest(model)
    out.update(all_reduces_per_step(counts))
    from trainer.training.feeder import Feeder

    x_share, _, _ = Feeder(strategy)._load(Batches(x, y, 4), 0)
    out["share_devices"] = [t.device for t in strategy.experimental_local_results(x_share)]
    out["replica_devices"] = list(strategy.extended.worker_devices)
    return out


@contextlib.contextmanager
def counting_all_reduces():
    """{graph: all-reduces made in it} while the block runs."""
    counts = {}
    original = tf.distribute.ReplicaContext.all_reduce

    def counting(self, *args, **kwargs):
        graph = tf.compat.v1.get_default_graph()
        counts[graph] = counts.get(graph, 0) + 1
        return original(self, *args, **kwargs)

    tf.distribute.ReplicaContext.all_reduce = counting
    try:
        yield counts
    finally:
        tf.distribute.ReplicaContext.all_reduce = original


def all_reduces_per_step(counts):
    """From the graphs the Probe saw traced (a call of K steps calls it K times): the all-reduces per training and per
    evaluation step, and whether an Assert op is in any of them."""
    per_step = {"train": set(), "evaluate": set()}
    asserts = set()
    for graph, training in Probe.calls:
        calls = sum(1 for g, t in Probe.calls if g is graph)
        per_step["train" if training else "evaluate"].add(counts.get(graph, 0) / calls)
        definition = graph.as_graph_def()  # the step's ops and those of the functions it calls (cond branches)
        ops = [n.op for n in definition.node] + [n.op for f in definition.library.function for n in f.node_def]
        asserts.add("Assert" in ops)
    return {"all_reduces_per_step": {k: sorted(v) for k, v in per_step.items()}, "assert_op_in_step": sorted(asserts)}


def clip_files(x):
    """Each clip of `x` as a feature file (video_features) in a new temp dir, for the project's generator."""
    tmp = Path(tempfile.mkdtemp())
    files = [tmp / f"{i}.npz" for i in range(len(x))]
    for path, clip in zip(files, x):
        np.savez(path, video_features=clip)
    return files


def case_short_batch():
    """2 replicas, the project's generator: 5 clips in global batches of 4 leave a last batch of one
    clip, which would give a replica zero rows."""
    from trainer.data.generator import FixedVideoFacenetGenerator

    x, y = clips(5, seed=8)
    files = clip_files(x)
    strategy = strategy_of_case()
    with strategy.scope():
        model = compile_model(project_model(probe=Probe(check_rows=True)), DEFAULTS["train"], CLASSES)
    lines = []
    out = {}
    for shuffle in (True, False):
        gens = [FixedVideoFacenetGenerator(files, y, 4, shuffle=shuffle, feature_dim=DIM, seed=1) for _ in range(2)]
        try:
            loop.fit(model, strategy, gens[0], gens[1], 2, [], log=lines.append)
            out[f"shuffle_{shuffle}"] = "trained"
        except (tf.errors.InvalidArgumentError, ValueError) as e:  # the zero-row share: at run time, or at trace time
            out[f"shuffle_{shuffle}"] = f"failed: {str(e).splitlines()[0][:200]}"
        out[f"rows_shuffle_{shuffle}"] = sorted(gens[0].batch_rows(i) for i in range(len(gens[0])))
    out["log"] = lines
    return out


def case_short_validation():
    """2 replicas, K=3, global batch 4: 9 validation clips leave a last batch of one clip. The project's
    generator merges it; one without require_rows (Batches) cannot. How many clips were scored."""
    from trainer.data.generator import FixedVideoFacenetGenerator
    from trainer.errors import DataError
    from trainer.training.callbacks import LoopCallback

    class Counter(LoopCallback):
        scored = []

        def validation_confusion(self, epoch, matrix):
            Counter.scored.append(int(matrix.sum()))

    x, y = clips(9, seed=4)
    files = clip_files(x)
    strategy = strategy_of_case()
    out = {}
    for name, val in (("project", FixedVideoFacenetGenerator(files, y, 4, shuffle=False, feature_dim=DIM, seed=1)),
                      ("plain", Batches(x, y, 4))):
        with strategy.scope():
            model = compile_model(project_model(), DEFAULTS["train"], CLASSES)
        Counter.scored = []
        try:
            loop.fit(model, strategy, Batches(x[:8], y[:8], 4), val, 1, [Counter()], log=lambda s: None, steps_per_execution=3)
            out[name] = {"scored": Counter.scored}
        except DataError as e:
            out[name] = {"error": str(e)}
    return out


def case_epoch_timing():
    """One device, StatusCallback: validation batches that take 1.5 s each to read (3 s an epoch), and a callback
    after StatusCallback that takes 1 s at each epoch's end (a checkpoint)."""
    from trainer.training.callbacks import StatusCallback
    from trainer.training.status import RunStatus

    class SlowBatches(Batches):
        def share(self, index, part, parts):
            time.sleep(1.5)
            return super().share(index, part, parts)

    class SlowSave(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            time.sleep(1.0)

    tmp = Path(tempfile.mkdtemp())
    x, y = clips(16, seed=5)
    model = compile_model(project_model(), DEFAULTS["train"], CLASSES)
    status = RunStatus(tmp, 2)
    loop.fit(model, strategy_of_case(), Batches(x, y, 4), SlowBatches(x[:8], y[:8], 4), 2,
             [StatusCallback(status, "val_loss", "min"), SlowSave()], log=lambda s: None)
    status.update(state="finished")
    st = json.loads((tmp / "status.json").read_text())
    return {k: st.get(k) for k in ("last_epoch_seconds", "last_epoch_train_seconds", "timing")}


def case_threads():
    """One of 2 loopback workers: 200 steps of a tiny model (a thread per collective would add 200); the process's
    threads before and after, and how often the training step was traced."""
    def threads():
        return int(next(line.split()[1] for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("Threads:")))

    strategy = strategy_of_case()
    with strategy.scope():
        model = compile_model(project_model(dropout=0.0, units=2, probe=Probe()), DEFAULTS["train"], CLASSES)
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(2, DIM)).astype(np.float32) for _ in range(400)]
    y = rng.integers(0, CLASSES, 400)
    loop.fit(model, strategy, Batches(x[:8], y[:8], 2), Batches(x[:2], y[:2], 2), 1, [], log=lambda s: None)  # traced, warmed
    before, t0 = threads(), time.monotonic()
    loop.fit(model, strategy, Batches(x, y, 2), Batches(x[:2], y[:2], 2), 1, [], log=lambda s: None)
    return {"threads_before": before, "threads_after": threads(), "steps": 200, "seconds": round(time.monotonic() - t0, 1),
            "train_traces": sum(training for _, training in Probe.calls)}  # clips of one length: one trace per fit call


class SlowOnce(keras.layers.Layer):
    """Identity whose first run (not its trace) sleeps `seconds`: a first call whose graph optimisation
    and first execution take long, as they do for a large steps_per_execution."""

    slept = False

    def __init__(self, seconds=0.0, **kwargs):
        super().__init__(**kwargs)
        self.seconds = seconds

    def _sleep_once(self):
        if not SlowOnce.slept:
            SlowOnce.slept = True
            time.sleep(self.seconds)
        return np.float32(0.0)

    def call(self, x, training=False):
        zero = tf.py_function(self._sleep_once, [], tf.float32)
        zero.set_shape([])
        return x + tf.cast(zero, x.dtype)

    def compute_output_shape(self, shape):
        return shape


def case_slow_first_call():
    """One device with a cluster's watchdog of 2 s: the first call takes 5 s (then each call well within 2 s)."""
    from trainer.training.peers import Watchdog

    status = Path(tempfile.mkdtemp()) / "status.json"
    status.write_text(json.dumps({"state": "running"}))
    watch = Watchdog(2, status, "no call of K training steps ended within 2 s", long_seconds=30)
    x, y = clips(16, seed=3)
    model = compile_model(project_model(probe=SlowOnce(5.0)), DEFAULTS["train"], CLASSES)
    t0 = time.monotonic()
    loop.fit(model, strategy_of_case(), Batches(x, y, 4), Batches(x[:4], y[:4], 4), 2, [], log=lambda s: None,
             steps_per_execution=2, watchdog=watch)
    watch.close()
    return {"survived": True, "slept": SlowOnce.slept, "seconds": round(time.monotonic() - t0, 1)}


def case_slow_chief():
    """One of 2 loopback workers, each with a watchdog of 4 s (60 s for long waits): the chief's epoch
    end takes 10 s of its own work (its watchdog paused), which the other worker waits out at the agreement."""
    from trainer.training.peers import Watchdog

    class SlowChief(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if distribute.worker_index(strategy) == 0:
                time.sleep(10)

    strategy = strategy_of_case()
    status = Path(tempfile.mkdtemp()) / "status.json"
    status.write_text(json.dumps({"state": "running"}))
    watch = Watchdog(4, status, "no call of K training steps ended within 4 s", long_seconds=60)
    x, y = clips(8, seed=6)
    with strategy.scope():
        model = compile_model(project_model(units=4), DEFAULTS["train"], CLASSES)
    loop.fit(model, strategy, Batches(x, y, 4), Batches(x[:4], y[:4], 4), 2, [SlowChief()], log=lambda s: None, watchdog=watch)
    watch.close()
    return {"survived": True}


def case_confusion_images():
    """One device, 2 epochs with ConfusionImages: how often the validation clips were read."""
    from trainer.training.callbacks import AtomicModelCheckpoint, ConfusionImages

    tmp = Path(tempfile.mkdtemp())
    x, y = clips(24, seed=9)
    model = compile_model(project_model(), DEFAULTS["train"], CLASSES)
    val = Batches(x[:12], y[:12], 4)
    checkpoint = AtomicModelCheckpoint(str(tmp / "best.keras"), monitor="val_loss", mode="min", save_best_only=True)
    images = ConfusionImages(checkpoint, [str(c) for c in range(CLASSES)], tmp / "logs")
    loop.fit(model, strategy_of_case(), Batches(x, y, 8), val, 2, [checkpoint, images], log=lambda s: None)
    out = {"val_batches": len(val), "val_reads": val.reads, "epochs": 2,
           "image_files": len(list((tmp / "logs" / "images").glob("events.out.tfevents.*")))}

    class Diverge(keras.callbacks.Callback):  # the weights blow up after epoch 4: epoch 5's loss is NaN
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 3:
                weights = self.model.trainable_variables[0]
                weights.assign(np.full(weights.shape, np.nan, np.float32))

    keras.utils.set_random_seed(1)
    model = compile_model(project_model(dropout=0.0), DEFAULTS["train"], CLASSES)
    checkpoint = AtomicModelCheckpoint(str(tmp / "failed" / "best.keras"), monitor="loss", mode="min", save_best_only=True)
    images = ConfusionImages(checkpoint, [str(c) for c in range(CLASSES)], tmp / "failed" / "logs")  # at most one a minute
    best = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: best.append(float(checkpoint.best)))
    try:
        loop.fit(model, strategy_of_case(), Batches(x, y, 8), Batches(x[:12], y[:12], 4), 8, [checkpoint, images, record, Diverge()],
                 log=lambda s: None)
    except NonFiniteTraining as e:  # the loss, or the weights where a kernel turned NaN into 0
        out["failed"] = str(e)
    out["best_epochs"] = sorted({best.index(value) + 1 for value in best})
    out["drawn_after_failure"] = sorted({event.step for f in (tmp / "failed" / "logs" / "images").glob("*tfevents*")
                                         for event in tf.compat.v1.train.summary_iterator(str(f)) for _ in event.summary.value})
    return out


def run_cases(names):
    """{name: result} of the cases, run in this order; each starts with the float32 policy and an empty probe record."""
    import traceback

    results = {}
    for name in names:
        keras.mixed_precision.set_global_policy("float32")
        Probe.calls.clear()
        try:
            results[name] = globals()[f"case_{name}"]()
        except Exception:  # noqa: BLE001 - the case's test shows it; the next cases still run
            results[name] = {"case_error": traceback.format_exc()}
    keras.mixed_precision.set_global_policy("float32")
    return results


if __name__ == "__main__":
    print(json.dumps(run_cases(sys.argv[1:])), flush=True)
