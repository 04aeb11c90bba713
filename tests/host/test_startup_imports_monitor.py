"""`fab monitor` against a host starts without the heavy libraries (`python -X importtime`)."""

import subprocess

from tests.support.helpers import ROOT
from tests.support.startup_imports import heavy_in, imported
from tests.support.warm_runner import FAB


def test_fab_monitor_imports_no_heavy_library(deploy_env):
    deploy_env.write(default_host="local")
    assert deploy_env.fab("sync-code").returncode == 0
    monitor = subprocess.run([str(FAB), "monitor"], cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                             env={**deploy_env.env, "PYTHONPROFILEIMPORTTIME": "1"})
    drawn = "No training has been started on this host" in monitor.stdout  # the screen drawn, for the "no run" state
    assert monitor.returncode == 5 and drawn, monitor.stdout + monitor.stderr[-2000:]
    assert "rich" in imported(monitor.stderr)
    assert heavy_in(monitor.stderr) == []
