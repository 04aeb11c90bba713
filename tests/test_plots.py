"""The run's pictures read at a glance: whole epochs, the best epoch marked, chance drawn."""

import csv

import numpy as np
import pytest

from trainer.results.plots import learning_curves_figure, learning_curves_png


def write_history(path, epochs):
    keys = ["epoch", "loss", "accuracy", "uar", "val_loss", "val_accuracy", "val_uar"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        for e in range(epochs):
            w.writerow({"epoch": e, "loss": 2 - e / 10, "accuracy": 0.2 + e / 20, "uar": 0.2 + e / 25,
                        "val_loss": 2.1 - e / 12, "val_accuracy": 0.18 + e / 30, "val_uar": 0.17 + e / 40})
    return path


def test_learning_curves_have_whole_epochs_the_best_epoch_and_chance(tmp_path):
    fig = learning_curves_figure(write_history(tmp_path / "history.csv", 3), best_epoch=2, classes=6)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    axes = {ax.get_title(): ax for ax in fig.axes}
    assert set(axes) == {"loss", "accuracy", "UAR"}
    for title, ax in axes.items():
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), (title, ticks)  # 1, 2, 3: never 1.25, 1.5
        vertical = [line for line in ax.get_lines() if list(line.get_xdata()) == [2, 2]]
        assert vertical and "best epoch" in vertical[0].get_label(), title
        chance = [line for line in ax.get_lines() if list(line.get_ydata()) == [1 / 6, 1 / 6]]
        assert bool(chance) == (title != "loss"), title  # chance on accuracy and UAR only
    assert learning_curves_png(tmp_path / "history.csv", 2, 6).startswith(b"\x89PNG")


def drawn_epochs(logdir):
    """{tag: the epochs (steps) of its pictures} in TensorBoard's logdir/images."""
    import tensorflow as tf

    epochs = {}
    for f in sorted((logdir / "images").glob("*tfevents*")):
        for event in tf.compat.v1.train.summary_iterator(str(f)):
            for value in event.summary.value:
                epochs.setdefault(value.tag, set()).add(event.step)
    return epochs


@pytest.mark.tf
@pytest.mark.parametrize("every, while_training, at_end", [(3600, {1}, {1, 5}), (0, {1, 2, 4, 5}, {1, 2, 4, 5})])
def test_best_epoch_pictures_are_drawn_at_most_once_a_period_and_the_last_best_at_the_end(tmp_path, every, while_training, at_end):
    from trainer.training.callbacks import ConfusionImages

    class Checkpoint:  # what ConfusionImages reads of the run's checkpoint: its best value so far
        best = None

    checkpoint = Checkpoint()
    images = ConfusionImages(checkpoint, ["ANG", "SAD"], tmp_path / "logs", every=every)
    for epoch, best in enumerate([0.5, 0.6, 0.6, 0.7, 0.8]):  # new best values at epochs 1, 2, 4, 5
        images.on_epoch_begin(epoch)
        images.validation_confusion(epoch, np.array([[epoch + 1, 1], [0, 2]]))
        checkpoint.best = best
        images.on_epoch_end(epoch)
    tags = ("validation/confusion_matrix_at_best_epoch", "validation/recall_per_class_at_best_epoch")
    assert drawn_epochs(tmp_path / "logs") == dict.fromkeys(tags, while_training)
    images.on_train_end()
    assert drawn_epochs(tmp_path / "logs") == dict.fromkeys(tags, at_end)
