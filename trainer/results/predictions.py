"""A run's per-clip test predictions (RUN/test_predictions.json): what `python -m trainer compare` pairs.

    write_predictions(run_dir, classes, clips)   # clips: [{"clip", "actor", "corpus", "true", "predicted"}, ...]
    pred = read_predictions(run_dir / run_format.TEST_PREDICTIONS)
    pred["classes"], pred["clips"][0]["true"]    # class names, not indices: the file reads on its own

A clip is named by its file name (not its path, which differs between the host and the laptop); the test split
is scored once, at the end of the run (trainer/training/finish.py), and this file is written just before
metrics.json, which marks the run finished.
"""

import json
from pathlib import PurePath

from trainer.errors import UserError
from trainer.run_format import run_format

COLUMNS = ("clip", "actor", "corpus", "true", "predicted")
VERSION = 1


def prediction_rows(entries, y_true, y_pred, classes):
    """The file's clips from the scored entries (trainer.data.validation.Entry, in prediction order) and the class
    indices of their true and predicted labels."""
    return [{"clip": PurePath(e.path).name, "actor": e.actor, "corpus": e.corpus, "true": classes[int(t)],
             "predicted": classes[int(p)]} for e, t, p in zip(entries, y_true, y_pred, strict=True)]


def write_predictions(run_dir, classes, clips):
    """RUN/test_predictions.json, written atomically (a reader sees the whole file or none)."""
    run_format.write_json(run_dir / run_format.TEST_PREDICTIONS, {"version": VERSION, "split": "test", "classes": list(classes),
                                                                  "columns": list(COLUMNS), "clips": clips}, mode=0o644)


def read_predictions(path):
    """{"classes": [...], "clips": [...]} of a predictions file; UserError (exit 2) naming the file and what is wrong
    with it when it is missing, unreadable or not of this form."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: the run has no test split (split.test_fraction: 0), has not finished, "
                        "or finished before runs kept their test predictions.") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path} does not read as JSON ({e}). Expected the test predictions the trainer writes.") from None
    problem = _problem(data)
    if problem:
        raise UserError(f"{path} is not a test predictions file of this version: {problem}.")
    return {"classes": data["classes"], "clips": data["clips"]}


def _problem(data):
    """What keeps `data` from being a predictions file, or None."""
    if not isinstance(data, dict) or data.get("version") != VERSION:
        return f"expected an object with version {VERSION}"
    classes, clips = data.get("classes"), data.get("clips")
    if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)):
        return f"expected 'classes', a list of at least 2 class names. Received: {classes!r:.80}"
    if not isinstance(clips, list) or not clips:
        return "expected 'clips', a list of at least one clip"
    for i, clip in enumerate(clips):
        if not isinstance(clip, dict) or not all(isinstance(clip.get(key), str) for key in COLUMNS):
            return f"clip {i} needs the text fields {', '.join(COLUMNS)}. Received: {clip!r:.120}"
        if clip["true"] not in classes or clip["predicted"] not in classes:
            return f"clip {clip['clip']} has a class outside {classes}: {clip['true']!r}, {clip['predicted']!r}"
    return None
