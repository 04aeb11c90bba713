"""Manifest entries for the split and normalization tests, without files."""

from trainer.config import DEFAULTS
from trainer.data.validation import Entry

CLASSES = DEFAULTS["data"]["classes"]


def entries(actors=20, per_class=1):
    return [Entry(path=f"/d/{a}_{s}_{e}_XX.npz", status="accepted", emotion=e, actor=f"crema-d:{a}", frames=10)
            for a in range(1001, 1001 + actors) for e in CLASSES for s in ["IWL", "TIE", "MTI"][:per_class]]

