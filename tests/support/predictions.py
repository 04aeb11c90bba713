"""Crafted test predictions (numpy, fixed seeds; no TensorFlow, no training) for the tests of `python -m trainer compare`
and `fab compare`: clips of 20 CREMA-D-named actors, a config's models that find the same clips easy, a class shuffled.

    clips = truth(); write_run(tmp / "a", clips, predict(clips, seed=1))   # RUN/test_predictions.json
"""

import numpy as np

from trainer.results.predictions import write_predictions

CLASSES = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]
ACTORS = [f"{1001 + i}" for i in range(20)]


def truth(actors=ACTORS, per_class=5):
    """(clip name, actor, class index) of `per_class` clips of every class for each actor, CREMA-D names."""
    return [(f"{a}_S{j:02d}_{CLASSES[c]}_XX.npz", f"crema-d:{a}", c) for a in actors for c in range(len(CLASSES)) for j in range(per_class)]


def easy(clips, seed=99):
    """Which clips a config's models find easy, shared by every run of it: more of them for some actors than others."""
    actors = sorted({actor for _, actor, _ in clips})
    skill = dict(zip(actors, np.random.default_rng(seed).uniform(0.35, 0.85, len(actors)), strict=True))
    return np.random.default_rng(seed + 1).random(len(clips)) < np.array([skill[actor] for _, actor, _ in clips])


def predict(clips, seed):
    """A model's predictions: right on 90% of the easy clips and 15% of the hard ones, else another class. Two seeds
    of a config agree on most clips, as two trainings of one network do."""
    rng = np.random.default_rng(seed)
    right = rng.random(len(clips)) < np.where(easy(clips), 0.9, 0.15)
    wrong = rng.integers(1, len(CLASSES), len(clips))
    return [t if r else (t + w) % len(CLASSES) for (_, _, t), r, w in zip(clips, right, wrong, strict=True)]


def write_run(folder, clips, predicted):
    folder.mkdir(parents=True, exist_ok=True)
    write_predictions(folder, CLASSES, [{"clip": name, "actor": actor, "corpus": "crema-d", "true": CLASSES[t],
                                         "predicted": CLASSES[int(p)]} for (name, actor, t), p in zip(clips, predicted, strict=True)])
    return folder


def shuffle_class(clips, predicted, cls, seed):
    """The predictions with those of class `cls`'s clips replaced by random classes (as if B trained on shuffled labels)."""
    rng = np.random.default_rng(seed)
    return [int(rng.integers(0, len(CLASSES))) if t == cls else p for (_, _, t), p in zip(clips, predicted, strict=True)]
