"""The estimate's step counts are those of the full config's split and padded batches (TensorFlow's generator)."""

import json

import pytest


@pytest.mark.tf
def test_the_counts_are_the_full_configs_split_and_padded_batches(tmp_path):
    from trainer.config import load_config
    from trainer.training.estimate import data_shape

    files = [{"path": f"/d/{actor}_{i}_{emotion}.npz", "status": "accepted", "emotion": emotion, "actor": f"crema-d:{actor}",
              "corpus": "crema-d", "frames": 40 + (i * 37) % 120}
             for actor in range(1001, 1021) for i, emotion in enumerate(["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"] * 2)]
    (tmp_path / "manifest.json").write_text(json.dumps({"files": files}))
    cfg = load_config(None, ["data.max_frames=100"])
    shape = data_shape(cfg, tmp_path / "manifest.json", 32)
    assert shape["train"] + shape["val"] + shape["test"] == 240 and shape["test"] > 0 and shape["val"] > 0
    capped = [min(f["frames"], 100) for f in files]
    assert sum(capped) / len(capped) < shape["frames"] <= 100  # batches are padded to their longest clip, capped
