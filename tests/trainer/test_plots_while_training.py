"""The best epoch's pictures while a model trains: at most once a period, and the last best at the end."""

import numpy as np
import pytest


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
