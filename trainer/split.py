"""Train/validation split: by actor (no actor on both sides), stratified by emotion.

    split = make_split(entries, method="actor", val_fraction=0.2, seed=42, classes=classes)
    split["train"], split["val"]   # lists of file paths; saved as split.json with the run

A random split is available but leaks identity into validation, and says so.
"""

import collections
import logging
import random

from trainer.errors import DataError

log = logging.getLogger(__name__)


def make_split(entries, method, val_fraction, seed, classes):
    """Dict with train/val paths, actors and per-class counts; DataError if a side is unusable."""
    if method == "actor":
        train, val = _actor_split(entries, val_fraction, seed)
    elif method == "random":
        log.warning("split.method=random puts clips of the same actor in training and validation: "
                    "validation scores will be inflated by identity. Use split.method=actor for honest numbers.")
        train, val = _random_split(entries, val_fraction, seed)
    else:
        raise DataError(f"split.method must be 'actor' or 'random'. Received: {method!r}")
    split = {
        "method": method,
        "seed": seed,
        "val_fraction": val_fraction,
        "train": sorted(e.path for e in train),
        "val": sorted(e.path for e in val),
        "train_actors": sorted({e.actor for e in train}),
        "val_actors": sorted({e.actor for e in val}),
        "counts": {
            "train": _class_counts(train, classes),
            "val": _class_counts(val, classes),
        },
    }
    check_split(split, classes)
    return split


def check_split(split, classes):
    for side in ("train", "val"):
        if not split[side]:
            raise DataError(
                f"The {side} split is empty ({len(split['train']) + len(split['val'])} files, "
                f"{len(split['train_actors']) + len(split['val_actors'])} actors, split.val_fraction="
                f"{split['val_fraction']}). Add data or change split.val_fraction."
            )
    missing = [c for c in classes if split["counts"]["train"][c] == 0]
    if missing:
        raise DataError(f"Class(es) {missing} have no training file after the split "
                        f"(training counts {split['counts']['train']}). Add actors with these emotions.")
    missing_val = [c for c in classes if split["counts"]["val"][c] == 0]
    if missing_val:
        log.warning("Class(es) %s have no validation file; their recall cannot be measured.", missing_val)


def _class_counts(entries, classes):
    counts = collections.Counter(e.emotion for e in entries)
    return {c: counts[c] for c in classes}


def _actor_split(entries, val_fraction, seed):
    by_actor = collections.defaultdict(list)
    for e in entries:
        by_actor[e.actor].append(e)
    actors = sorted(by_actor)
    if len(actors) < 2:
        raise DataError(f"An actor split needs at least 2 actors; the data has {len(actors)} ({actors}). "
                        "Add data, or set split.method=random (validation will then share actors).")
    random.Random(seed).shuffle(actors)
    totals = collections.Counter(e.emotion for e in entries)
    target = {c: val_fraction * n for c, n in totals.items()}
    in_val = collections.Counter()
    val_actors = []
    for actor in actors:
        have = collections.Counter(e.emotion for e in by_actor[actor])
        # Take the actor if it fills more of the per-class validation deficit than it overshoots.
        fill = sum(min(n, max(0.0, target[c] - in_val[c])) for c, n in have.items())
        over = sum(max(0.0, in_val[c] + n - target[c]) for c, n in have.items())
        if fill > over:
            val_actors.append(actor)
            in_val.update(have)
    if not val_actors:  # every actor alone overshoots: take the smallest one
        val_actors = [min(actors, key=lambda a: len(by_actor[a]))]
    if len(val_actors) == len(actors):
        val_actors = val_actors[:-1]
    val_set = set(val_actors)
    train = [e for a in actors if a not in val_set for e in by_actor[a]]
    val = [e for a in val_actors for e in by_actor[a]]
    return train, val


def _random_split(entries, val_fraction, seed):
    rng = random.Random(seed)
    by_class = collections.defaultdict(list)
    for e in sorted(entries, key=lambda e: e.path):
        by_class[e.emotion].append(e)
    train, val = [], []
    for group in by_class.values():
        rng.shuffle(group)
        k = round(len(group) * val_fraction)
        val += group[:k]
        train += group[k:]
    return train, val
