"""Train/validation/test split: by actor (no actor in two of them), stratified by emotion.

    split = make_split(entries, method="actor", val_fraction=0.2, seed=42, classes=classes, test_fraction=0.15)
    split["train"], split["val"], split["test"]   # lists of file paths; saved as split.json with the run
    split = make_split(..., test_actors=["1001", "1002"])   # a cross-validation fold: the test side is given

The test actors are held out from training and from model selection (validation picks the best
epoch); a run scores its best model on them once, at the end. `val_fraction` and `test_fraction`
are shares of all the data. A random split is available but leaks identity, and says so.
"""

import collections
import logging
import random

from trainer.errors import DataError

log = logging.getLogger(__name__)
SIDES = ("train", "val", "test")


def make_split(entries, method, val_fraction, seed, classes, test_fraction=0.0, test_actors=None):
    """Dict with train/val/test paths, actors and per-class counts; DataError if a side is unusable."""
    if method not in ("actor", "random"):
        raise DataError(f"split.method must be 'actor' or 'random'. Received: {method!r}")
    if method == "random":
        log.warning("split.method=random puts clips of the same actor in training and validation: "
                    "validation scores will be inflated by identity. Use split.method=actor for honest numbers.")
    pick = _actor_split if method == "actor" else _random_split
    wants_test = test_actors is not None or test_fraction > 0
    actors = {e.actor for e in entries}
    if method == "actor" and wants_test and len(actors) < 3:
        raise DataError(f"A train/validation/test split by actor needs at least 3 actors; the data has {len(actors)} "
                        f"({sorted(actors)}). Add data, or set split.test_fraction: 0 (no test split).")
    if test_actors is not None:
        held = set(test_actors)
        rest, test = [e for e in entries if e.actor not in held], [e for e in entries if e.actor in held]
    elif test_fraction > 0:
        rest, test = pick(entries, test_fraction, seed)
    else:
        rest, test = list(entries), []
    val_share = val_fraction * len(entries) / max(len(rest), 1)  # val_fraction is a share of all the data
    if rest and val_share >= 1:
        raise DataError(f"split.val_fraction {val_fraction} of {len(entries)} files leaves nothing to train on beside "
                        f"the {len(test)} test files. Lower split.val_fraction or split.test_fraction.")
    train, val = pick(rest, val_share, seed) if rest else ([], [])
    parts = {"train": train, "val": val, "test": test}
    split = {
        "method": method,
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction if test_actors is None else None,
        **{side: sorted(e.path for e in parts[side]) for side in SIDES},
        **{f"{side}_actors": sorted({e.actor for e in parts[side]}) for side in SIDES},
        "counts": {side: _class_counts(parts[side], classes) for side in SIDES},
    }
    check_split(split, classes, wants_test)
    return split


def check_split(split, classes, wants_test=False):
    for side in ("train", "val", "test") if wants_test else ("train", "val"):
        if not split[side]:
            total = sum(len(split.get(s, [])) for s in SIDES)
            actors = sum(len(split.get(f"{s}_actors", [])) for s in SIDES)
            raise DataError(
                f"The {side} split is empty ({total} files, {actors} actors, split.val_fraction={split['val_fraction']}, "
                f"split.test_fraction={split.get('test_fraction')}). Add data or change the fractions."
            )
    missing = [c for c in classes if split["counts"]["train"][c] == 0]
    if missing:
        raise DataError(f"Class(es) {missing} have no training file after the split "
                        f"(training counts {split['counts']['train']}). Add actors with these emotions.")
    for side, name in (("val", "validation"), ("test", "test")):
        absent = [c for c in classes if split["counts"].get(side, {}).get(c, 0) == 0]
        if split.get(side) and absent:
            log.warning("Class(es) %s have no %s file; their recall cannot be measured there.", absent, name)


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
