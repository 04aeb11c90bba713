"""Score a model: on a run's validation split, or on other data with the run's normalisation.

    metrics = evaluate_run("runs/20261124-101500")                      # eval-val.json
    metrics = evaluate_run("runs/20261124-101500", ["data/new-actors"])  # eval-new-actors.json
"""

import weakref
from pathlib import Path

import numpy as np

from trainer.errors import DataError, UserError
from trainer.results.metrics import classification_metrics
from trainer.results.report import make_console
from trainer.run_format import run_format


def predict(model, gen):
    """(y_true, y_pred) over every batch of a generator, in the generator's order.

    The model is called directly, not through predict_on_batch: under a MirroredStrategy (a
    callback's model during fit) predict_on_batch returns one output per replica, concatenated.
    The call is one tf.function per model, traced once for any batch size and length: called eagerly
    it costs about 60 times more CPU per batch."""
    from keras import ops

    infer = inference_function(model)
    y_true, y_pred = [], []
    for i in range(len(gen)):
        x, y = gen[i]
        y_true.append(y)
        y_pred.append(np.argmax(ops.convert_to_numpy(infer(x)), axis=-1))
    return np.concatenate(y_true), np.concatenate(y_pred)


_INFER = weakref.WeakKeyDictionary()


def inference_function(model):
    """model(x, training=False) as a tf.function of (batch, frames, features) inputs, one per model."""
    if model not in _INFER:
        import tensorflow as tf

        spec = tf.TensorSpec([None, None, model.inputs[0].shape[-1]], tf.float32)
        _INFER[model] = tf.function(lambda x: model(x, training=False), input_signature=[spec], autograph=False)
    return _INFER[model]


def score(model, gen, classes):
    return classification_metrics(*predict(model, gen), classes)


def evaluate_run(run_dir, data_dirs=None, console=None):
    from trainer.config import load_config
    from trainer.data import pipeline as data
    from trainer.results.report import print_metrics
    from trainer.training.model import load_model
    from trainer.training.status import write_json_atomic

    console = console or make_console()
    run_dir = Path(run_dir)
    model_path = run_dir / run_format.BEST_MODEL
    if not model_path.is_file():
        raise UserError(f"{run_dir} has no best.keras: the run has not finished an epoch yet, or this is not a run directory.")
    cfg = load_config(run_dir / run_format.CONFIG)
    prepared = data.load_prepared(run_dir)
    if data_dirs:
        result = data.validate_with_progress(data_dirs, cfg["data"], console)
        entries = {e.path: e for e in result.accepted if e.emotion in cfg["data"]["classes"]}
        if not entries:
            raise DataError(f"No valid file to evaluate in {', '.join(map(str, data_dirs))}.")
        paths, name = sorted(entries), Path(data_dirs[-1]).resolve().name
        seen = {e.actor for e in entries.values()} & set(prepared.split["train_actors"])
        if seen:
            console.print(f"[yellow]warning[/]: {len(seen)} actors of this data were in training (e.g. {sorted(seen)[0]}); "
                          "the score is inflated by identity.")
    else:
        entries, paths, name = prepared.entries, prepared.split["val"], "val"
    gen = data.make_generator(cfg, paths, entries, prepared.stats, shuffle=False)
    metrics = score(load_model(model_path), gen, cfg["data"]["classes"])
    metrics["data"] = [str(d) for d in data_dirs] if data_dirs else "validation split"
    out = run_dir / f"eval-{name}.json"
    write_json_atomic(out, metrics)
    print_metrics(metrics, console, title=f"Evaluation on {name}")
    console.print(f"Wrote {out}")
    return metrics
