"""`fab --list` and `fab monitor` start without the heavy libraries: a look at the host must not pay for
TensorFlow, numpy, matplotlib or boto3 (`python -X importtime` says what a `fab` process imported).
"""

import os
import re
import subprocess
import sys

from tests.support.fab_runner import FAB
from tests.support.helpers import ROOT

HEAVY = ("tensorflow", "keras", "numpy", "matplotlib", "boto3", "botocore", "pandas", "scipy")


def imported(stderr):
    """The top-level packages `python -X importtime` lists in `stderr`."""
    return {m.group(1).split(".")[0] for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)", stderr, re.M)}


def heavy_in(stderr):
    return sorted(set(HEAVY) & imported(stderr))


def test_fab_list_imports_no_heavy_library():
    proc = subprocess.run([sys.executable, "-X", "importtime", str(FAB), "--list"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and "monitor" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "fabric" in imported(proc.stderr)  # the check sees what it should
    assert heavy_in(proc.stderr) == []


def test_fab_monitor_imports_no_heavy_library(deploy_env):
    deploy_env.write(default_host="local")
    assert deploy_env.fab("sync-code").returncode == 0
    monitor = subprocess.run([str(FAB), "monitor"], cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                             env={**deploy_env.env, "PYTHONPROFILEIMPORTTIME": "1"})
    drawn = "No training has been started on this host" in monitor.stdout  # the screen drawn, for the "no run" state
    assert monitor.returncode == 5 and drawn, monitor.stdout + monitor.stderr[-2000:]
    assert "rich" in imported(monitor.stderr)
    assert heavy_in(monitor.stderr) == []
