"""Two runs compared on the same test clips: the paired difference B − A in UAR, accuracy and macro F1.

    result = compare_runs("runs/base", "runs/wider")     # each a run folder, or a cross-validation run folder
    result["difference"]["uar"], result["ci95"]["uar"]   # B − A, and its 95% interval
    result["verdict"]                                     # "B is better: UAR B − A = +0.052 [+0.021, +0.083] ..."
    write_comparison(result, "comparisons")               # compare-base-vs-wider.json and .png

Each run's test clips come from its test_predictions.json (trainer/results/predictions.py); a cross-validation
run's from every fold's, so its clips are every actor's. Two runs are compared only on the same clips: runs whose
test clips differ are refused, naming the clips and actors only one of them has.

The interval is a paired bootstrap over the test actors: each resample draws as many actors as there are, with
replacement, and scores both runs on those actors' clips; the difference B − A of each resample gives the interval
(metrics.py's resamples and percentile interval, a fixed seed). Pairing cancels what both runs share, the luck of
which actors are in the test split, so the interval of the difference is narrower than two runs' separate
intervals suggest.
"""

import json
import re
from pathlib import Path

import numpy as np
from rich.table import Table
from rich.text import Text

from trainer.errors import UserError
from trainer.results.metrics import (
    RESAMPLES,
    classification_metrics,
    confusion_per_group,
    percentile_interval,
    resample_counts,
    scores_from_confusion,
)
from trainer.results.predictions import read_predictions
from trainer.run_format import run_format

SCORES = ("uar", "accuracy", "macro_f1")
NAMES = {"uar": "UAR", "accuracy": "accuracy", "macro_f1": "macro F1"}
EXAMPLES = 3  # clips or actors named when runs differ


def load_run(run_dir):
    """{"run", "label", "classes", "clips": {(corpus, clip file name): clip}, "folds"} of a run folder, or of a
    cross-validation run folder (every fold's test clips; "folds": each fold's test actors)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a run folder. Expected a folder holding {run_format.TEST_PREDICTIONS}, "
                        f"or a cross-validation run's (with {run_format.CV_PLAN}).")
    plan_path = run_dir / run_format.CV_PLAN
    if plan_path.is_file():
        try:
            plan = json.loads(plan_path.read_text())
            folds = [list(actors) for actors in plan["test_actors"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{plan_path} does not read as a cross-validation plan ({type(e).__name__}: {e}).") from None
        parts = [read_predictions(run_dir / f"fold-{k}" / run_format.TEST_PREDICTIONS) for k in range(1, len(folds) + 1)]
    else:
        folds, parts = None, [read_predictions(run_dir / run_format.TEST_PREDICTIONS)]
    classes, clips = parts[0]["classes"], {}
    for k, part in enumerate(parts, 1):
        where = run_dir / (f"fold-{k}" if folds else "") / run_format.TEST_PREDICTIONS
        if part["classes"] != classes:
            raise UserError(f"{where} has the classes {part['classes']}; the run's first fold has {classes}.")
        for clip in part["clips"]:
            key = (clip["corpus"], clip["clip"])
            if key in clips:
                raise UserError(f"{where}: clip {clip['clip']} ({clip['corpus']}) is tested twice. Expected each clip once.")
            clips[key] = clip
    return {"run": str(run_dir), "label": run_dir.resolve().name, "classes": classes, "clips": clips, "folds": folds}


def _named(items):
    items = sorted(items)
    return f"{len(items)} ({', '.join(items[:EXAMPLES])}{', ...' if len(items) > EXAMPLES else ''})"


def refuse_different_tests(a, b):
    """UserError (exit 2) unless both runs were tested on the same clips, with the same classes and labels."""
    if a["classes"] != b["classes"]:
        raise UserError(f"{a['run']} and {b['run']} have different classes: {a['classes']} and {b['classes']}. "
                        "Expected runs of the same classes, in the same order.")
    only_a, only_b = a["clips"].keys() - b["clips"].keys(), b["clips"].keys() - a["clips"].keys()
    if only_a or only_b:
        actors = [{c["actor"] for c in run["clips"].values()} for run in (a, b)]
        lines = [f"clips only in {run['run']}: {_named(clip for _, clip in only)}" for run, only in ((a, only_a), (b, only_b)) if only]
        lines += [f"actors only in {run['run']}: {_named(mine - theirs)}"
                  for run, mine, theirs in ((a, *actors), (b, *actors[::-1])) if mine - theirs]
        raise UserError(f"{a['run']} and {b['run']} were tested on different clips, so their scores cannot be paired: "
                        + "; ".join(lines) + ". Compare runs of the same test split (the same data and seed, or the same folds).")
    differ = [clip for (_, clip), mine in a["clips"].items()
              if (mine["true"], mine["actor"]) != (b["clips"][(mine["corpus"], clip)]["true"], b["clips"][(mine["corpus"], clip)]["actor"])]
    if differ:
        raise UserError(f"{a['run']} and {b['run']} label the same clips differently (true class or actor): {_named(differ)}. "
                        "Expected the same labels (the same data.label_map).")


def compare_runs(run_a, run_b, resamples=RESAMPLES, seed=0):
    """The comparison of run B with run A on their shared test clips (see the module's docstring), as JSON-ready data."""
    a, b = load_run(run_a), load_run(run_b)
    refuse_different_tests(a, b)
    classes, keys = a["classes"], sorted(a["clips"])
    index = {name: i for i, name in enumerate(classes)}
    y_true = np.array([index[a["clips"][key]["true"]] for key in keys])
    pred = {side: np.array([index[run["clips"][key]["predicted"]] for key in keys]) for side, run in (("a", a), ("b", b))}
    actors = np.array([a["clips"][key]["actor"] for key in keys])
    names = sorted(set(actors.tolist()))
    counts = resample_counts(len(names), resamples, seed)  # the same resamples for both runs: the pairing
    cms = {side: np.tensordot(counts, confusion_per_group(y_true, p, actors, names, len(classes)), axes=(1, 0))
           for side, p in pred.items()}
    resampled = {side: scores_from_confusion(cm) for side, cm in cms.items()}
    recall = {side: _recall(cm) for side, cm in cms.items()}
    runs = {side: _summary(run, classification_metrics(y_true, pred[side], classes)) for side, run in (("a", a), ("b", b))}
    supported = [i for i, name in enumerate(classes) if runs["a"]["support"][name]]
    result = {
        "a": runs["a"], "b": runs["b"], "classes": classes, "clips": len(keys), "actors": len(names),
        "difference": {key: runs["b"][key] - runs["a"][key] for key in SCORES},
        "ci95": {key: percentile_interval(resampled["b"][key] - resampled["a"][key]) for key in SCORES},
        "recall_difference": {classes[i]: runs["b"]["recall"][classes[i]] - runs["a"]["recall"][classes[i]] for i in supported},
        "recall_ci95": {classes[i]: percentile_interval(recall["b"][:, i] - recall["a"][:, i]) for i in supported},
        "interval": f"95% paired bootstrap over the {len(names)} shared test actors ({resamples} resamples, B − A)",
        "notes": _notes(a, b),
    }
    result["verdicts"] = {key: verdict(key, result["difference"][key], result["ci95"][key]) for key in SCORES}
    result["verdict"] = result["verdicts"]["uar"]
    return result


def _recall(cms):
    """Per-class recall of a stack of confusion matrices (resamples, k); NaN for a class a resample has no clip of."""
    support = cms.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diagonal(cms, axis1=-2, axis2=-1) / support, np.nan)


def _summary(run, m):
    return {"run": run["run"], "label": run["label"], "folds": len(run["folds"]) if run["folds"] else None,
            **{key: m[key] for key in SCORES},
            "recall": {name: row["recall"] for name, row in m["per_class"].items()},
            "support": {name: row["support"] for name, row in m["per_class"].items()}}


def _notes(a, b):
    if a["folds"] and b["folds"] and sorted(map(sorted, a["folds"])) != sorted(map(sorted, b["folds"])):
        return ["the two cross-validations' folds differ: the difference also holds which actors trained each fold's model"]
    return []


def verdict(key, difference, interval):
    """One sentence: B is better or worse when the interval of B − A excludes 0, else no difference shown."""
    lo, hi = interval
    said = f"{NAMES[key]} B − A = {difference:+.3f} [{lo:+.3f}, {hi:+.3f}]"
    if lo > 0:
        return f"B is better: {said}"
    if hi < 0:
        return f"B is worse: {said}"
    return f"no difference shown: {said}, the interval holds 0"


def file_stem(result):
    """compare-A-vs-B, each run's folder name with anything but letters, digits, '.', '_' and '-' as '_'."""
    clean = [re.sub(r"[^A-Za-z0-9._-]", "_", result[side]["label"]) for side in ("a", "b")]
    return f"compare-{clean[0]}-vs-{clean[1]}"


def write_comparison(result, out_dir):
    """OUT/compare-A-vs-B.json (the result) and OUT/compare-A-vs-B.png (per-class recall of both runs and the
    difference); returns their paths."""
    from trainer.results.plots import compare_recall_png

    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        json_path, png_path = out_dir / f"{file_stem(result)}.json", out_dir / f"{file_stem(result)}.png"
        run_format.write_json(json_path, result, mode=0o644)
        png_path.write_bytes(compare_recall_png(result))
    except OSError as e:
        raise UserError(f"Cannot write the comparison into {out_dir}: {e}.") from None
    return json_path, png_path


def print_comparison(result, console):
    """The scores of both runs, B − A with its interval, per-class recall, then the verdict."""
    a, b = result["a"], result["b"]
    console.print(Text(f"A: {a['run']}\nB: {b['run']}\n{result['clips']} test clips, {result['actors']} actors"
                       + (", every actor (cross-validation)" if a["folds"] and b["folds"] else "")))
    table = Table(title=f"intervals: {result['interval']}", title_justify="left")
    for col in ("", "A", "B", "B − A", "95% interval"):
        table.add_column(col, justify="left" if not col else "right")
    rows = [(NAMES[key], a[key], b[key], result["difference"][key], result["ci95"][key]) for key in SCORES]
    rows += [(f"recall {name}", a["recall"][name], b["recall"][name], d, result["recall_ci95"][name])
             for name, d in result["recall_difference"].items()]
    for name, va, vb, d, (lo, hi) in rows:
        table.add_row(Text(name), f"{va:.3f}", f"{vb:.3f}", f"{d:+.3f}", f"[{lo:+.3f}, {hi:+.3f}]")
    console.print(table)
    for note in result["notes"]:
        console.print(Text(f"note: {note}"))
    console.print(Text(result["verdict"], style="bold"))
