"""Cross-validation by actor: K folds, each one a normal run directory RUN/fold-k/.

    run_dir = start_cv(cfg, ["data/crema-d"], "runs", folds=5)   # python -m trainer cv ...
    continue_cv(run_dir)                                           # python -m trainer train --resume RUN

The folds partition the actors (each actor is tested exactly once), balanced per emotion. Fold k
tests on its actors; its validation actors (split.val_fraction of all the data) come from the
others, and its normalisation from its own training frames. Files of RUN:

    cv-plan.json   the folds' test actors and the data dirs: fixed at the start, from the seed
    fold-k/        a run directory (split.json, best.keras, metrics.json, backup/ while it runs)
    cv.json        per-fold test metrics, their mean and standard deviation, the pooled confusion
                   matrix; rewritten after every fold
    status.json    the running fold's status, with fold and folds, for the monitor

Stop and resume work per fold: a resumed CV skips finished folds and continues the first
unfinished one from its backup.
"""

import collections
import json
import random
import statistics
from pathlib import Path

from trainer.config import dump_config, load_config
from trainer.errors import DataError, UserError
from trainer.results.report import make_console, print_cv
from trainer.results.runfiles import check_run_paths, refuse_special_entries
from trainer.run_format import run_format
from trainer.training.run import execute, new_run
from trainer.training.status import write_json_atomic

PLAN, SUMMARY = run_format.CV_PLAN, run_format.CV
HEADLINE = ("uar", "accuracy", "macro_f1")


def assign_folds(entries, folds, seed):
    """`folds` lists of actors: a partition of the actors, each fold's emotion counts as even as the actors allow."""
    by_actor = collections.defaultdict(collections.Counter)
    for e in entries:
        by_actor[e.actor][e.emotion] += 1
    actors = sorted(by_actor)
    if len(actors) < folds:
        raise DataError(f"{folds} folds need at least {folds} actors; the data has {len(actors)}. Lower --folds.")
    random.Random(seed).shuffle(actors)
    actors.sort(key=lambda a: -sum(by_actor[a].values()))  # large actors first; ties keep the seeded order
    counts = [collections.Counter() for _ in range(folds)]
    members = [[] for _ in range(folds)]
    for actor in actors:
        have = by_actor[actor]
        # the fold whose per-emotion counts grow least in squares: evens the counts out; then the fold with fewer actors
        best = min(range(folds), key=lambda f: (sum((counts[f][c] + n) ** 2 - counts[f][c] ** 2 for c, n in have.items()),  # noqa: B023
                                                 len(members[f])))
        counts[best].update(have)
        members[best].append(actor)
    return [sorted(m) for m in members]


def start_cv(cfg, data_dirs, runs_dir, folds, run_name=None, console=None, price_per_hour=None):
    """Plan the folds over the data's actors and train them; returns the run directory."""
    from trainer.data import pipeline as data
    if folds < 2:
        raise DataError(f"Cross-validation needs at least 2 folds. Received: --folds {folds}")
    console = console or make_console()
    run_dir = new_run(cfg, runs_dir, run_name)
    result = data.validate_with_progress(data_dirs, cfg["data"], console)
    data.require_trainable(result, cfg["data"]["classes"])
    entries = data.subsample([e for e in result.accepted if e.emotion in cfg["data"]["classes"]], cfg["data"]["max_clips"], cfg["seed"])
    plan = {"folds": folds, "seed": cfg["seed"], "data_dirs": [str(Path(d).resolve()) for d in data_dirs],
            "test_actors": assign_folds(entries, folds, cfg["seed"])}
    write_json_atomic(run_dir / PLAN, plan)
    console.print(f"Cross-validation: {folds} folds over {sum(map(len, plan['test_actors']))} actors "
                  f"({', '.join(str(len(a)) for a in plan['test_actors'])} per fold)", highlight=False)
    return continue_cv(run_dir, console=console, price_per_hour=price_per_hour)


def is_cv(run_dir):
    return (Path(run_dir) / PLAN).is_file()


def refuse_finished_cv(run_dir):
    """UserError (exit 2) for a cross-validation whose every fold finished: resuming it would train the folds again
    from their start, their backups being gone, and rewrite cv.json. Nothing is written (a broken plan: continue_cv
    reports it)."""
    try:
        folds = json.loads((run_dir / PLAN).read_text())["folds"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if all((run_dir / f"fold-{k}" / run_format.METRICS).is_file() for k in range(1, folds + 1)):
        raise UserError(f"run {run_dir.name} is finished; start a new run (its results: {run_dir / SUMMARY}). "
                        "Resuming it would train it again from its first epoch and rewrite them.")


def continue_cv(run_dir, console=None, price_per_hour=None, data_dirs=None):
    """Train every unfinished fold, in order (a fold with data prepared resumes); returns the run directory."""
    run_dir = Path(run_dir)
    refuse_special_entries(run_dir, f"train in {run_dir}")
    refuse_finished_cv(run_dir)
    check_run_paths(run_dir)  # its data_dirs
    plan = json.loads((run_dir / PLAN).read_text())
    cfg = load_config(run_dir / run_format.CONFIG)
    folds, summary = plan["folds"], None
    for k, actors in enumerate(plan["test_actors"], 1):
        fold_dir = run_dir / f"fold-{k}"
        if (fold_dir / run_format.METRICS).is_file():
            continue
        mirror = (run_dir / run_format.STATUS, {"run": run_dir.name, "fold": k, "folds": folds})
        if (fold_dir / run_format.SPLIT).is_file():
            execute(fold_dir, data_dirs=data_dirs, resume=True, console=console, price_per_hour=price_per_hour, mirror=mirror)
        else:
            fold_dir.mkdir(exist_ok=True)
            (fold_dir / run_format.CONFIG).write_text(dump_config(cfg))
            execute(fold_dir, data_dirs=data_dirs or plan["data_dirs"], console=console, price_per_hour=price_per_hour,
                    test_actors=actors, mirror=mirror)
        summary = summarize(run_dir)  # after every fold, for the monitor; after the last trained fold, final
        write_json_atomic(run_dir / SUMMARY, summary)
    if summary is None:  # every fold had finished before this call
        summary = summarize(run_dir)
        write_json_atomic(run_dir / SUMMARY, summary)
    print_cv(summary, console or make_console())
    status = json.loads((run_dir / run_format.STATUS).read_text()) if (run_dir / run_format.STATUS).is_file() else {"run": run_dir.name}
    status.update(state="finished", metrics={"split": "cross-validation test", **summary["mean"]}, eta_seconds=0)
    write_json_atomic(run_dir / run_format.STATUS, status)
    return run_dir


def summarize(run_dir):
    """cv.json from the finished folds: their test metrics, mean, sample standard deviation, pooled confusion matrix."""
    from trainer.results.metrics import metrics_from_confusion

    run_dir = Path(run_dir)
    plan = json.loads((run_dir / PLAN).read_text())
    per_fold, pooled = [], None
    for k, actors in enumerate(plan["test_actors"], 1):
        path = run_dir / f"fold-{k}" / run_format.METRICS
        if not path.is_file():
            continue
        m = json.loads(path.read_text())
        test = m["test"]
        per_fold.append({"fold": k, "test_actors": actors, "best_epoch": m.get("best_epoch"),
                         "test": {key: test[key] for key in ("samples", "accuracy", "uar", "macro_f1", "ci95")}})
        cm = test["confusion_matrix"]
        pooled = cm if pooled is None else [[a + b for a, b in zip(r1, r2)] for r1, r2 in zip(pooled, cm)]
        classes = test["classes"]
    summary = {"folds": plan["folds"], "folds_done": len(per_fold), "per_fold": per_fold, "mean": None, "std": None, "pooled": None}
    if per_fold:
        values = {key: [f["test"][key] for f in per_fold] for key in HEADLINE}
        summary["mean"] = {key: statistics.fmean(v) for key, v in values.items()}
        summary["std"] = {key: statistics.stdev(v) if len(v) > 1 else 0.0 for key, v in values.items()}
        summary["pooled"] = metrics_from_confusion(pooled, classes)
    return summary
