"""Plain helpers of every kind of test: the repo's root, data and config files, the trainer's command line, polling."""

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def write_clip(path, frames=10, dim=512, key="video_features", value=None, dtype=np.float32, **extra):
    """A feature file with `frames` random frames (or `value` as the array itself)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = value if value is not None else np.random.default_rng(frames).normal(size=(frames, dim)).astype(dtype)
    np.savez(path, **{key: arr}, **extra)
    return path


def run_trainer(*args, cwd=None, timeout=300, env=None):
    """`python -m trainer ARGS` in its own process (warm: tests/support/warm_runner.py), this process's environment
    with `env` over it; a CompletedProcess with text output."""
    from tests.support.warm_runner import run_trainer as run_warm

    return run_warm(args, cwd=cwd or ROOT, env={**os.environ, **(env or {})}, timeout=timeout)


def write_config(path, **sections):
    """A training config file (YAML) with the given sections, e.g. train={"epochs": 40}."""
    import yaml

    path.write_text(yaml.safe_dump(sections))
    return path


# pictures off: matplotlib is a fifth of a tiny training's CPU; a test that looks at them turns them on
TINY_CONFIG = {"data": {"max_frames": 40}, "model": {"units": 8, "head_units": 8},
               "train": {"batch_size": 16, "workers": 1, "patience": 100, "lr_patience": 100, "pictures": False}}


def wait_until(predicate, timeout=120, what="condition"):
    """The first true value of `predicate()`, polled every 0.3 s; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def output_of(proc, timeout, context=lambda: ""):
    """The whole output of `proc` (stdout, stderr merged) once it has ended. After `timeout` s the test fails with what
    it printed, its threads' stacks (SIGABRT: Python's faulthandler prints them, on in DeployEnv.popen's) and
    `context()` (what the hosts were doing): a hang says where it hung."""
    import signal

    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            out = proc.communicate(timeout=15)[0] or ""
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0] or ""
        raise AssertionError(f"{proc.args[:2]} still running after {timeout} s, stopped with SIGABRT. It printed:\n{out}\n{context()}") from None


def mount_tmpfs(path, size):
    """A real tmpfs of `size` (e.g. "2m") mounted at `path` (made here): a small disk to fill. Skips the
    test where that cannot be (not root, mount not permitted). Unmount with `umount -l PATH`."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs as the host's runs dir")
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True).returncode != 0:
        pytest.skip("mount -t tmpfs is not permitted here")
    return path


def fill_disk(path):
    """Write `path` until its disk is full (ENOSPC), as another program on the host would."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 2**16)
        except OSError:
            pass


def read_status(run):
    """The run folder's status.json, or {} before its trainer wrote one (or while it writes it)."""
    try:
        return json.loads((run / "status.json").read_text())
    except (OSError, ValueError):
        return {}
