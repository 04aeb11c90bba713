"""A run prepared on another host whose data path carries an attacker's key line (test_tampered_run, and through
`fab` test_tampered_run_deploy)."""

import json

import numpy as np

from tests.support.helpers import TINY_CONFIG, write_config

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAttackerKeyLine attacker@evil"

OWNER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwnerKeyLine owner@laptop\n"

CLIP = "1001_DFA_ANG_XX.npz"


def crafted_run(root, old_dir, name="moved"):
    """A run prepared on another host, data in `old_dir`, ready to resume up to its data: config,
    manifest, split, normalisation (no backup: the attack happens before training)."""
    from trainer.config import dump_config, load_config

    run = root / "runs" / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(load_config(write_config(root / "cfg.yaml", **TINY_CONFIG))))
    clip = f"{old_dir}/{CLIP}"
    record = {"path": clip, "status": "accepted", "reason": None, "detail": None, "emotion": "ANG", "actor": "crema-d:1001",
              "corpus": "crema-d", "frames": 10}
    (run / "manifest.json").write_text(json.dumps({"dirs": [old_dir], "files": [record]}))
    (run / "split.json").write_text(json.dumps({"method": "actor", "train": [clip], "val": [], "test": []}))
    np.savez(run / "normalization.npz", mean=np.zeros(512, np.float32), std=np.ones(512, np.float32), frames=np.int64(10))
    return run

