"""Pictures of a run: the confusion matrix, per-class recall and the learning curves, as PNG.

    png = confusion_png(metrics, "test", run="exp-3")   # bytes: counts and row-normalised, side by side
    pngs = save_pictures(run_dir, metrics, "test")       # {"confusion_matrix.png": bytes, "recall.png": ..., "learning_curves.png": ...}
    png = compare_recall_png(compare_runs(a, b))         # two runs' recall per class, and B − A (trainer/results/compare.py)
    log_image(run_dir / "logs", "test/confusion_matrix", png, step)    # the same picture in TensorBoard

Every picture names its run (`run_label(run_dir)`: "exp-3", or "cv-1/fold-2" for a fold), so a PNG
copied out of its folder still says where it came from. Each `*_png` draws its `*_figure`, which
tests read. matplotlib's object API with the Agg canvas: no display, no global pyplot state.
"""

import csv
import io
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from trainer.run_format import run_format

PICTURES = ("confusion_matrix.png", "recall.png", "learning_curves.png")
RATE_TOP = 1.04  # y-limit of the accuracy and UAR panels: a curve at 1.0 stays in sight, not on the frame


def run_label(run_dir):
    """The run a picture belongs to: the run directory's name, with its CV run's name for a fold."""
    run_dir = Path(run_dir)
    return f"{run_dir.parent.name}/{run_dir.name}" if run_dir.name.startswith("fold-") else run_dir.name


def _png(fig):
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def confusion_png(metrics, name, run):
    return _png(confusion_figure(metrics, name, run))


def confusion_figure(metrics, name, run):
    """Counts and row-normalised confusion matrix of one split's metrics (classification_metrics), of run `run`."""
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
    fig.suptitle(f"Run {run}, {name}: UAR {metrics['uar']:.3f}, accuracy {metrics['accuracy']:.3f} ({metrics['samples']} clips)")
    return fig


def recall_png(metrics, name, run):
    return _png(recall_figure(metrics, name, run))


def recall_figure(metrics, name, run):
    """One bar per class, its recall written on it, against UAR and chance."""
    classes = metrics["classes"]
    recall = [metrics["per_class"][c]["recall"] for c in classes]
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    bars = ax.bar(classes, recall, color="tab:blue")
    ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2, bbox={"fc": "white", "ec": "none", "pad": 1})  # readable over the UAR line
    ax.axhline(metrics["uar"], color="tab:red", linestyle="--", label=f"UAR {metrics['uar']:.3f}")
    ax.axhline(1 / len(classes), color="gray", linestyle=":", label="chance")
    ax.set(ylim=(0, 1.15), ylabel="recall", title=f"Run {run}, {name}: recall per class")  # room for a label over 1.00
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # beside the bars, never over a label
    return fig


def compare_recall_png(comparison):
    return _png(compare_recall_figure(comparison))


def compare_recall_figure(comparison):
    """Two runs compared (trainer/results/compare.py): per-class recall of A and B side by side, and the difference
    B − A per class with its 95% interval (paired over the shared test actors)."""
    a, b, classes = comparison["a"], comparison["b"], comparison["classes"]
    x = np.arange(len(classes))
    fig = Figure(figsize=(12, 4), layout="constrained")
    ax = fig.add_subplot(1, 2, 1)
    for side, run, shift, color in (("A", a, -0.2, "tab:gray"), ("B", b, 0.2, "tab:blue")):
        bars = ax.bar(x + shift, [run["recall"][c] for c in classes], width=0.4, color=color, label=f"{side}: {run['label']}")
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.axhline(1 / len(classes), color="gray", linestyle=":", label="chance")
    ax.set(xticks=x, xticklabels=classes, ylim=(0, 1.15), ylabel="recall", title="recall per class")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax = fig.add_subplot(1, 2, 2)
    shown = [c for c in classes if c in comparison["recall_difference"]]
    diff = np.array([comparison["recall_difference"][c] for c in shown])
    lo, hi = (np.array([comparison["recall_ci95"][c][i] for c in shown]) for i in (0, 1))
    ax.bar(shown, diff, color=np.where(lo > 0, "tab:green", np.where(hi < 0, "tab:red", "tab:gray")),
           yerr=[diff - lo, hi - diff], capsize=4)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set(ylabel="recall B − A", title="B − A per class, 95% paired interval over actors")
    d, (ulo, uhi) = comparison["difference"]["uar"], comparison["ci95"]["uar"]
    fig.suptitle(f"A: {a['label']} vs B: {b['label']}, UAR {a['uar']:.3f} vs {b['uar']:.3f}, B − A {d:+.3f} [{ulo:+.3f}, {uhi:+.3f}] "
                 f"({comparison['clips']} clips, {comparison['actors']} actors)")
    return fig


def learning_curves_png(history_csv, best_epoch=None, classes=None, run=None):
    return _png(learning_curves_figure(history_csv, best_epoch, classes, run))


def learning_curves_figure(history_csv, best_epoch=None, classes=None, run=None):
    """Loss, accuracy and UAR per epoch, training and validation, from history.csv (CSVLogger), of run `run`
    (default: the name of history.csv's folder, see run_label).

    Whole epochs on the x axis; `best_epoch` (1-based: the epoch best.keras holds) is marked on
    every panel, and chance (1 / `classes`) is drawn on the accuracy and UAR panels."""
    from matplotlib.ticker import MaxNLocator

    with open(history_csv) as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig = Figure(figsize=(15, 4), layout="constrained")  # room for the suptitle above the panel titles
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
            ax.set_ylim(0, RATE_TOP)
        ax.legend(fontsize=8)
    fig.suptitle(f"Run {run or run_label(Path(history_csv).parent)}: learning curves")
    return fig


def save_pictures(run_dir, metrics, name, best_epoch=None):
    """The run's PNGs beside metrics.json; returns them as {file name: PNG bytes}."""
    run_dir = Path(run_dir)
    run = run_label(run_dir)
    pictures = {"confusion_matrix.png": confusion_png(metrics, name, run), "recall.png": recall_png(metrics, name, run)}
    if (run_dir / run_format.HISTORY).is_file():
        pictures["learning_curves.png"] = learning_curves_png(run_dir / run_format.HISTORY, best_epoch, len(metrics["classes"]), run)
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
