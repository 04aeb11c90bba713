"""What a run records of where and with what it ran: environment.json, and the code's version.

    environment()      # {"python", "tensorflow", "keras", "numpy", "platform", "host", "cpus", "gpus", "code_version", ...}
    code_version()     # the deploy's .code-version stamp (the host has no .git), else `git describe`
"""

import os
import platform
import subprocess
from pathlib import Path

from trainer.training.status import now_iso

CODE_ROOT = Path(__file__).resolve().parents[2]


def environment():
    import keras
    import numpy
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "code_version": code_version(),
        "recorded_at": now_iso(),
    }


def code_version():
    """`.code-version` written by the deploy (the host has no .git), else git describe."""
    stamp = CODE_ROOT / ".code-version"
    if stamp.is_file():
        return stamp.read_text().strip()
    try:
        out = subprocess.run(["git", "-C", str(CODE_ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
