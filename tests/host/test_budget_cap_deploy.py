"""The budget cap on a host: a running training is stopped, then the host powers off (a real sshd, fake poweroff)."""

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.deploy_env import make_ready
from tests.support.helpers import wait_until
from tests.support.standin_fixtures import on_standin


@pytest.mark.ssh
@pytest.mark.slow
def test_the_cap_stops_a_running_training_then_powers_off(fake_bin_host, standin_venv, tmp_path):
    env = make_ready(on_standin(fake_bin_host(), standin_venv), tmp_path)  # the stand-in trainer (tests/support/standin_trainer.py)
    env.configure(epochs=400)  # far longer than the test
    train = env.fab("train", "--run-name", "capped")
    assert train.returncode == 0, train.out
    wait_until(lambda: json.loads((env.runs / "capped" / "status.json").read_text()).get("epoch", 0) >= 1
               if (env.runs / "capped" / "status.json").exists() else False, 180, "the first epoch")
    marker = tmp_path / "powered off"
    agent = Path(env.inventory["remote"]["project_dir"]) / "remote_scripts" / "host_agent.py"
    changes = {"poll_seconds": 0.5, "spot_grace_seconds": 60,
               "budget": {"deadline": time.time() + 8, "max_hours": 2, "command": f"touch {shlex.quote(str(marker))}", "warn_seconds": 900}}
    configured = subprocess.run([sys.executable, str(agent), "configure", str(env.runs), json.dumps(changes)], capture_output=True, text=True)
    assert configured.returncode == 0 and json.loads(configured.stdout)["ok"], configured.stdout + configured.stderr

    wait_until(lambda: marker.exists(), 120, "the cap's command")
    record = json.loads((env.runs / "capped" / "exit.json").read_text())
    assert record["exit_code"] == 3, record  # stopped gracefully before the command ran, its backup kept
    assert (env.runs / "capped" / "backup").is_dir()
    cap = json.loads((env.runs / ".agent" / "budget.json").read_text())
    assert cap["exit_code"] == 0 and cap["fired_at"] and cap["warning"].startswith("budget cap: this host powers off")
    log = (env.runs / ".agent" / "agent.log").read_text()
    assert "notify budget-warning" in log and "budget cap reached" in log and "stopping training capped" in log, log
    monitor = env.fab("monitor")
    assert monitor.returncode == 3, monitor.out  # stopped, resumable
