import numpy as np
import pytest

from tests.support.helpers import write_clip
from tests.support.split_entries import CLASSES, entries
from trainer.config import DEFAULTS
from trainer.data.normalization import compute_stats
from trainer.data.split import check_split, make_split
from trainer.data.validation import validate_dirs
from trainer.errors import DataError


def test_actor_split_shares_no_actor_and_keeps_every_class_in_both_sides():
    split = make_split(entries(20), "actor", 0.2, seed=1, classes=CLASSES)
    assert not set(split["train_actors"]) & set(split["val_actors"])
    assert not set(split["train"]) & set(split["val"])
    assert len(split["train"]) + len(split["val"]) == 120
    assert all(n > 0 for n in split["counts"]["val"].values())
    assert 0.1 <= len(split["val"]) / 120 <= 0.3


def test_actor_split_on_real_synthetic_data_never_shares_an_actor(synth_crema):
    accepted = validate_dirs([synth_crema], DEFAULTS["data"]).accepted
    split = make_split(accepted, "actor", 0.2, seed=0, classes=CLASSES)
    actor_of = {e.path: e.actor for e in accepted}
    assert not {actor_of[p] for p in split["train"]} & {actor_of[p] for p in split["val"]}


def test_split_is_reproducible_from_the_seed():
    a = make_split(entries(20), "actor", 0.2, seed=7, classes=CLASSES)
    b = make_split(entries(20), "actor", 0.2, seed=7, classes=CLASSES)
    c = make_split(entries(20), "actor", 0.2, seed=8, classes=CLASSES)
    assert a == b and a["val_actors"] != c["val_actors"]


def test_random_split_warns_about_identity_leak(caplog):
    split = make_split(entries(5, per_class=3), "random", 0.2, seed=1, classes=CLASSES)
    assert "inflated by identity" in caplog.text
    assert split["val"] and set(split["train_actors"]) & set(split["val_actors"])


def test_one_actor_cannot_be_split_by_actor():
    with pytest.raises(DataError, match="at least 2 actors"):
        make_split(entries(1), "actor", 0.2, seed=1, classes=CLASSES)


def test_a_class_missing_from_training_is_an_error():
    split = {"train": ["/d/a.npz"], "val": ["/d/b.npz"], "train_actors": ["a"], "val_actors": ["b"], "val_fraction": 0.5,
             "counts": {"train": {"ANG": 1, "SAD": 0}, "val": {"ANG": 0, "SAD": 1}}}
    with pytest.raises(DataError, match=r"\['SAD'\] have no training file"):
        check_split(split, ["ANG", "SAD"])


def test_an_empty_side_is_an_error_not_an_empty_dataset():
    split = {"train": ["/d/a.npz"], "val": [], "train_actors": ["a"], "val_actors": [], "val_fraction": 0.2,
             "counts": {"train": {"ANG": 1}, "val": {"ANG": 0}}}
    with pytest.raises(DataError, match="The val split is empty"):
        check_split(split, ["ANG"])


def test_stats_equal_a_single_pass_over_training_frames_only(tmp_path):
    rng = np.random.default_rng(0)
    train = [rng.normal(loc=i, size=(5 + 3 * i, 512)).astype(np.float32) for i in range(4)]
    paths = [write_clip(tmp_path / f"{1001 + i}_IWL_ANG_XX.npz", value=x) for i, x in enumerate(train)]
    write_clip(tmp_path / "1099_IWL_ANG_XX.npz", value=np.full((50, 512), 1000.0, np.float32))  # validation clip
    stats = compute_stats(paths)
    frames = np.concatenate(train).astype(np.float64)
    assert stats["frames"] == len(frames)
    np.testing.assert_allclose(stats["mean"], frames.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["std"], frames.std(0), rtol=1e-5)
