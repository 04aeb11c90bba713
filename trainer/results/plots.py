"""Pictures of a run: the confusion matrix, per-class recall and the learning curves, as PNG.

    png = confusion_png(metrics, "test")        # bytes: counts and row-normalised, side by side
    pngs = save_pictures(run_dir, metrics, "test")   # {"confusion_matrix.png": bytes, "recall.png": ..., "learning_curves.png": ...}
    log_image(run_dir / "logs", "test/confusion_matrix", png, step)    # the same picture in TensorBoard

matplotlib's object API with the Agg canvas: no display, no global pyplot state.
"""

import csv
import io
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PICTURES = ("confusion_matrix.png", "recall.png", "learning_curves.png")


def _png(fig):
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def confusion_png(metrics, name):
    """Counts and row-normalised confusion matrix of one split's metrics (classification_metrics)."""
    classes, cm = metrics["classes"], np.asarray(metrics["confusion_matrix"], float)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig = Figure(figsize=(11, 4.6))
    for ax, values, title, fmt in ((fig.add_subplot(1, 2, 1), cm, "counts", "{:.0f}"),
                                   (fig.add_subplot(1, 2, 2), norm, "row-normalised (recall on the diagonal)", "{:.2f}")):
        ax.imshow(values, cmap="Blues", vmin=0, vmax=values.max() or 1)
        ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
               xlabel="predicted", ylabel="true", title=f"{name}: {title}")
        top = values.max() or 1
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if values[i, j] > top / 2 else "black")
    fig.suptitle(f"{name}: UAR {metrics['uar']:.3f}, accuracy {metrics['accuracy']:.3f} ({metrics['samples']} clips)")
    return _png(fig)


def recall_png(metrics, name):
    classes = metrics["classes"]
    recall = [metrics["per_class"][c]["recall"] for c in classes]
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    ax.bar(classes, recall, color="tab:blue")
    ax.axhline(metrics["uar"], color="tab:red", linestyle="--", label=f"UAR {metrics['uar']:.3f}")
    ax.axhline(1 / len(classes), color="gray", linestyle=":", label="chance")
    ax.set(ylim=(0, 1), ylabel="recall", title=f"{name}: recall per class")
    ax.legend(loc="upper right", fontsize=8)
    return _png(fig)


def learning_curves_png(history_csv, best_epoch=None, classes=None):
    return _png(learning_curves_figure(history_csv, best_epoch, classes))


def learning_curves_figure(history_csv, best_epoch=None, classes=None):
    """Loss, accuracy and UAR per epoch, training and validation, from history.csv (CSVLogger).

    Whole epochs on the x axis; `best_epoch` (1-based: the epoch best.keras holds) is marked on
    every panel, and chance (1 / `classes`) is drawn on the accuracy and UAR panels."""
    from matplotlib.ticker import MaxNLocator

    with open(history_csv) as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig = Figure(figsize=(15, 4))
    for i, (metric, label) in enumerate((("loss", "loss"), ("accuracy", "accuracy"), ("uar", "UAR")), 1):
        ax = fig.add_subplot(1, 3, i)
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if rows and key in rows[0]:
                ax.plot(epochs, [float(r[key]) for r in rows], style, marker="." if len(rows) < 30 else None,
                        label="validation" if key.startswith("val_") else "training")
        if best_epoch:
            ax.axvline(best_epoch, color="tab:green", linestyle=":", label=f"best epoch ({best_epoch}: best.keras)")
        if classes and metric != "loss":
            ax.axhline(1 / classes, color="gray", linestyle=":", label=f"chance (1/{classes})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="epoch", ylabel=label, title=label)
        if metric != "loss":
            ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    return fig


def save_pictures(run_dir, metrics, name, best_epoch=None):
    """The run's PNGs beside metrics.json; returns them as {file name: PNG bytes}."""
    run_dir = Path(run_dir)
    pictures = {"confusion_matrix.png": confusion_png(metrics, name), "recall.png": recall_png(metrics, name)}
    if (run_dir / "history.csv").is_file():
        pictures["learning_curves.png"] = learning_curves_png(run_dir / "history.csv", best_epoch, len(metrics["classes"]))
    for file, png in pictures.items():
        (run_dir / file).write_bytes(png)
    return pictures


def log_image(logdir, tag, png, step):
    """One PNG as an image summary in TensorBoard's logdir/images run."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(Path(logdir) / "images"))
    with writer.as_default():
        tf.summary.image(tag, tf.image.decode_png(png, channels=4)[tf.newaxis], step=step)
    writer.flush()
    writer.close()
