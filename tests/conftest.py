import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def write_clip(path, frames=10, dim=512, key="video_features", value=None, dtype=np.float32, **extra):
    """A feature file with `frames` random frames (or `value` as the array itself)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = value if value is not None else np.random.default_rng(frames).normal(size=(frames, dim)).astype(dtype)
    np.savez(path, **{key: arr}, **extra)
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Keep the validation cache of each test in its own temp dir, not in ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture(scope="session")
def synth_crema(tmp_path_factory):
    """240 synthetic CREMA-D clips (read-only: copy before changing)."""
    from trainer.synth import write_corpus

    out = tmp_path_factory.mktemp("synth") / "crema-d"
    write_corpus(out, "crema-d", clips=240, seed=3)
    return out


def run_trainer(*args, cwd=None, timeout=300, env=None):
    """`python -m trainer ARGS` as a subprocess; returns CompletedProcess with text output."""
    return subprocess.run([sys.executable, "-m", "trainer", *map(str, args)], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
