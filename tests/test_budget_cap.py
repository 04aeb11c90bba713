"""The budget cap (launch.max_hours): the host agent warns 15 minutes before, then stops the training
and powers the host off (here: a command that writes a file), whatever the host is doing, once.

Real parts: the host agent's own code (remote_scripts/host_agent.py), and for the training case the
stand-in trainer (tests/standin_trainer.py) on a real sshd host on 127.0.0.1 and the agent as a separate process.
"""

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from standin_fixtures import on_standin

from tests.conftest import ROOT, make_ready, wait_until

sys.path.insert(0, str(ROOT / "remote_scripts"))
import host_agent  # noqa: E402 - the host's script, standard library only
import run_format  # noqa: E402


def settings(deadline, marker):
    return {**run_format.AGENT_DEFAULTS, "metadata_url": None, "budget": {"deadline": deadline, "max_hours": 2,
                                                                    "command": f"touch {shlex.quote(str(marker))}", "warn_seconds": 900}}


def test_the_cap_warns_fifteen_minutes_before_then_fires_once(tmp_path):
    runs = tmp_path / "runs"
    (runs / ".agent").mkdir(parents=True)
    marker = tmp_path / "powered off"
    now = time.time()
    early = settings(now + 3600, marker)  # an hour ahead: nothing yet
    state = host_agent.poll_once(str(runs), early, {"started": now})
    assert "warning" not in state["budget"] and not marker.exists()

    soon = settings(now + 600, marker)  # ten minutes ahead: inside the warning window
    state = host_agent.poll_once(str(runs), soon, {"started": now})
    assert state["budget"]["warning"].startswith("budget cap: this host powers off at") and "in about 10 min" in state["budget"]["warning"]
    log = (runs / ".agent" / "agent.log").read_text()
    assert "notify budget-warning: budget cap: this host powers off" in log and not marker.exists()
    host_agent.poll_once(str(runs), soon, {"started": now})
    assert (runs / ".agent" / "agent.log").read_text().count("notify budget-warning") == 1  # warned once

    passed = settings(now - 1, marker)
    state = host_agent.poll_once(str(runs), passed, {"started": now})
    assert marker.exists() and state["budget"]["exit_code"] == 0 and state["budget"]["fired_at"]
    marker.unlink()
    host_agent.poll_once(str(runs), passed, {"started": now})  # the host started again by hand: not capped again
    assert not marker.exists()
    assert json.loads((runs / ".agent" / "budget.json").read_text())["fired_at"] == state["budget"]["fired_at"]


@pytest.mark.ssh
@pytest.mark.slow
def test_the_cap_stops_a_running_training_then_powers_off(fake_bin_host, standin_venv, tmp_path):
    env = make_ready(on_standin(fake_bin_host(), standin_venv), tmp_path)  # the stand-in trainer (tests/standin_trainer.py)
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
