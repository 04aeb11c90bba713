"""The end of a run on the chief: the best model scored on the validation split and the held-out test actors,
test_predictions.json (each test clip's prediction, for `python -m trainer compare`), metrics.json and its pictures
written, status.json `finished`.

    finish_run(cfg, run_dir, prepared, model, val_gen, status, distribution, gpus, history, started, console)
"""

import shutil
import time

from trainer.results.predictions import prediction_rows, write_predictions
from trainer.results.report import headline, print_run_metrics
from trainer.run_format import run_format
from trainer.training.status import write_json_atomic

NO_PICTURES = "none drawn (train.pictures is false)"  # train.log's line when no picture was drawn


def finish_run(cfg, run_dir, prepared, model, val_gen, status, distribution, gpus, history, started, console):
    """Score the best model (best.keras, else the last weights), write metrics.json and the pictures, remove the backup
    (a finished run has nothing to resume) and record the run `finished` with its headline metrics."""
    from trainer.training.model import load_model

    best = load_model(run_dir / run_format.BEST_MODEL) if (run_dir / run_format.BEST_MODEL).exists() else model
    metrics, predictions = final_scores(cfg, prepared, best, val_gen, distribution["global_batch_size"])
    metrics.update(
        best_epoch=(status.data["best"] or {}).get("epoch"),
        epochs_run=status.data["epoch"],
        training_seconds=round(time.monotonic() - started, 1),
        split_samples={side: len(prepared.split.get(side, [])) for side in ("train", "val", "test")},
        monitor=cfg["train"]["monitor"],
        compute=compute_record(status.data, gpus),
    )
    pictures = draw(run_dir, metrics, status.data["epoch"]) if cfg["train"]["pictures"] else {}  # {file name: PNG bytes}
    if predictions:  # before metrics.json, which marks the run finished
        write_predictions(run_dir, cfg["data"]["classes"], predictions)
    write_json_atomic(run_dir / run_format.METRICS, metrics)
    shutil.rmtree(run_dir / "backup", ignore_errors=True)  # finished: nothing left to resume
    print_run_metrics(metrics, console)
    if pictures:
        console.print("Pictures: " + ", ".join(pictures) + f" in {run_dir} (and in TensorBoard, IMAGES)", highlight=False)
    else:
        console.print(f"Pictures: {NO_PICTURES}", highlight=False)
    name, top = headline(metrics)
    status.update(state="finished", metrics={"split": name, **{k: top[k] for k in ("accuracy", "uar", "macro_f1")},
                                             "ci95": top.get("ci95")}, eta_seconds=0, weights_sha256=history.weights_sha256)


def final_scores(cfg, prepared, model, val_gen, batch_size):
    """(metrics, test predictions): the best model scored on the validation split (which chose it) and, once, on the
    held-out test actors, with 95% intervals over actors; `headline` names the split a user should quote. The test
    predictions are each test clip's row of test_predictions.json (None without a test split)."""
    from trainer.data import pipeline as data
    from trainer.results.evaluate import predict, score
    from trainer.results.metrics import held_out_report

    classes = cfg["data"]["classes"]
    metrics = {"validation": score(model, val_gen, classes), "test": None, "headline": "validation"}
    test = prepared.split.get("test") or []
    if not test:
        return metrics, None
    gen = data.make_generator(cfg, test, prepared.entries, prepared.stats, shuffle=False, batch_size=batch_size)
    y_true, y_pred = predict(model, gen)
    clips = [prepared.entries[test[i]] for i in gen.order]
    metrics["test"] = held_out_report(y_true, y_pred, [e.actor for e in clips], [e.corpus for e in clips], classes, seed=cfg["seed"])
    metrics["headline"] = "test"
    return metrics, prediction_rows(clips, y_true, y_pred, classes)


def draw(run_dir, metrics, step):
    """The headline split's PNGs in the run dir; the same and the validation matrix in TensorBoard."""
    from trainer.results.plots import confusion_png, log_image, run_label, save_pictures

    name = metrics["headline"]
    pictures = save_pictures(run_dir, metrics[name], name, best_epoch=metrics.get("best_epoch"))
    log_image(run_dir / "logs", f"{name}/confusion_matrix_at_end", pictures["confusion_matrix.png"], step)
    log_image(run_dir / "logs", f"{name}/recall_per_class_at_end", pictures["recall.png"], step)
    if name != "validation":
        png = confusion_png(metrics["validation"], "validation", run_label(run_dir))
        log_image(run_dir / "logs", "validation/confusion_matrix_at_end", png, step)
    return pictures


def compute_record(status, gpus):
    """Hours the trainer ran (all sessions of a resumed run), GPU hours and, with a price, the cost in USD."""
    hours = status.get("compute_seconds", 0) / 3600
    price = status.get("price_per_hour")
    return {"hours": round(hours, 4), "gpus": gpus, "gpu_hours": round(hours * gpus, 4), "price_per_hour": price,
            "cost_usd": round(hours * price, 2) if price else None}
