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
    support, predicted, hits = cm.sum(1), cm.sum(0), np.diag(cm)
    recall = np.divide(hits, support, out=np.zeros(k), where=support > 0)
    precision = np.divide(hits, predicted, out=np.zeros(k), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    present = support > 0
    return {
        "samples": int(len(y_true)),
        "accuracy": float(hits.sum() / max(len(y_true), 1)),
        "uar": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "classes": list(classes),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
    }
