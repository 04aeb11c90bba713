"""Scores of a classifier as plain JSON-ready data: accuracy, UAR, macro F1, confusion.

    m = classification_metrics(y_true, y_pred, ["ANG", "DIS", ...])
    m["uar"], m["per_class"]["ANG"]["recall"], m["confusion_matrix"]
"""

import numpy as np


def classification_metrics(y_true, y_pred, classes):
    y_true, y_pred = np.asarray(y_true, int), np.asarray(y_pred, int)
    k = len(classes)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (y_true, y_pred), 1)
    return metrics_from_confusion(cm, classes)


def metrics_from_confusion(cm, classes):
    """The metrics of classification_metrics from a confusion matrix (rows: true, columns: predicted)."""
    cm = np.asarray(cm, int)
    k = len(classes)
    support, predicted, hits = cm.sum(1), cm.sum(0), np.diag(cm)
    recall = np.divide(hits, support, out=np.zeros(k), where=support > 0)
    precision = np.divide(hits, predicted, out=np.zeros(k), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    present = support > 0
    return {
        "samples": int(cm.sum()),
        "accuracy": float(hits.sum() / max(cm.sum(), 1)),
        "uar": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "classes": list(classes),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
    }


def scores_from_confusion(cms):
    """Accuracy, UAR and macro F1 of a stack of confusion matrices (..., k, k), as arrays; classes
    without support are left out of UAR and macro F1, as in classification_metrics."""
    cms = np.asarray(cms, float)
    support, predicted, hits = cms.sum(-1), cms.sum(-2), np.diagonal(cms, axis1=-2, axis2=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, hits / support, np.nan)
        precision = np.where(predicted > 0, hits / predicted, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        f1 = np.where(support > 0, f1, np.nan)
        return {"accuracy": hits.sum(-1) / np.maximum(cms.sum((-2, -1)), 1),
                "uar": np.nanmean(recall, axis=-1), "macro_f1": np.nanmean(f1, axis=-1)}


RESAMPLES = 2000  # bootstrap resamples of the held-out actors


def bootstrap_ci(y_true, y_pred, groups, k, resamples=RESAMPLES, seed=0, level=0.95):
    """95% intervals of accuracy, UAR and macro F1 from a bootstrap over `groups` (actors): each
    resample draws as many actors as there are, with replacement, and pools their clips. Resampling
    actors, not clips, because clips of one actor are not independent."""
    names = sorted(set(np.asarray(groups).tolist()))
    cms = np.tensordot(resample_counts(len(names), resamples, seed), confusion_per_group(y_true, y_pred, groups, names, k),
                       axes=(1, 0))  # (resamples, k, k)
    return {name: percentile_interval(values, level) for name, values in scores_from_confusion(cms).items()}


def confusion_per_group(y_true, y_pred, groups, names, k):
    """One confusion matrix per group of `names` (its clips'), as an array (groups, k, k)."""
    y_true, y_pred, groups = np.asarray(y_true, int), np.asarray(y_pred, int), np.asarray(groups)
    per_group = np.zeros((len(names), k, k))
    for g, name in enumerate(names):
        mask = groups == name
        np.add.at(per_group[g], (y_true[mask], y_pred[mask]), 1)
    return per_group


def resample_counts(groups, resamples=RESAMPLES, seed=0):
    """How often each of `groups` groups is drawn in each resample (resamples, groups): each resample draws as many
    groups as there are, with replacement. The same seed draws the same resamples, so two runs' clips of the same
    groups can be resampled together (a paired bootstrap, trainer/results/compare.py)."""
    draws = np.random.default_rng(seed).integers(0, groups, size=(resamples, groups))
    return np.stack([np.bincount(d, minlength=groups) for d in draws])


def percentile_interval(values, level=0.95):
    """[low, high]: the central `level` of `values` (NaN, a resample without a class, left out)."""
    tail = (1 - level) / 2 * 100
    return [float(np.nanpercentile(values, tail)), float(np.nanpercentile(values, 100 - tail))]


def held_out_report(y_true, y_pred, actors, corpora, classes, seed=0):
    """Metrics of a held-out set with 95% intervals over actors, and per corpus when there are several."""
    actors, corpora = np.asarray(actors), np.asarray(corpora)
    report = classification_metrics(y_true, y_pred, classes)
    report.update(actors=len(set(actors.tolist())), ci95=bootstrap_ci(y_true, y_pred, actors, len(classes), seed=seed),
                  interval=f"95% bootstrap over actors ({RESAMPLES} resamples)")
    if len(set(corpora.tolist())) > 1:
        y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
        report["per_corpus"] = {}
        for corpus in sorted(set(corpora.tolist())):
            m = corpora == corpus
            part = classification_metrics(y_true[m], y_pred[m], classes)
            report["per_corpus"][corpus] = {
                **{key: part[key] for key in ("samples", "accuracy", "uar", "macro_f1")},
                "actors": len(set(actors[m].tolist())),
                "ci95": bootstrap_ci(y_true[m], y_pred[m], actors[m], len(classes), seed=seed)}
    return report
