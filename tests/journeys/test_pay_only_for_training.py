"""Pay only for training: autostop on the host, the cost line, spot preemption survived.

Real parts: `fab` against real sshd hosts on 127.0.0.1, the real host agent (remote_scripts/
host_agent.py), a real HTTP server standing in for EC2's instance metadata service (IMDSv2). The trainings
are the stand-in trainer's (tests/support/standin_trainer.py): these tests read records, states, exit codes
and costs around a training, never its numbers.
What cannot run here: a poweroff (autostop runs a command that writes a file instead) and
cron (a fake `crontab` on the host's PATH keeps the table in a file).
"""

import csv
import json
import re
import shlex
import subprocess
import threading
import time
from http.server import ThreadingHTTPServer

import pytest

from tests.support.deploy_env import make_ready
from tests.support.helpers import wait_until
from tests.support.host_fakes import FAKE_CRONTAB, MetadataService
from tests.support.standin_fixtures import on_standin

pytestmark = [pytest.mark.ssh, pytest.mark.slow]


def status(env):
    try:
        return json.loads((env.runs / env.current_run() / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def exit_record(env):
    try:
        return json.loads((env.runs / env.current_run() / "exit.json").read_text())
    except (OSError, ValueError):
        return None


def test_autostop_waits_for_the_training_fires_when_idle_and_is_rearmed_at_boot(fake_bin_host, standin_venv, tmp_path):
    env = make_ready(on_standin(fake_bin_host(crontab=FAKE_CRONTAB), standin_venv), tmp_path)
    fired = tmp_path / "powered off"
    idle_s = 4
    env.configure(epochs=400)  # far longer than the test: it ends with `fab stop`
    env.write(price_per_hour=2.5, autostop={"idle_minutes": idle_s / 60, "command": f"touch {shlex.quote(str(fired))}", "wait_for": []},
              ec2={"poll_seconds": 0.5, "metadata_url": "http://127.0.0.1:9"})

    train = env.fab("train")  # arms autostop from the inventory, then starts the training
    assert train.returncode == 0, train.out
    assert "autostop: armed" in train.out and "re-armed at every boot" in train.out, train.out
    table = (env.fake_bin / "crontab.txt").read_text()
    assert table.startswith("@reboot ") and "host_agent.py' boot" in table, table

    # it never fires while a training runs, however long nothing else touches the host
    wait_until(lambda: status(env).get("epoch", 0) >= 1, 120, "the first epoch")
    time.sleep(idle_s * 2)
    assert exit_record(env) is None and not fired.exists()
    monitor = env.fab("monitor")
    assert "runs its command after 4 idle seconds; waits while the training runs" in monitor.out, monitor.out
    assert re.search(r"cost\s+up \S+\s+\$[\d.]+ so far at \$2.5/h\s+about \$[\d.]+ more to finish", monitor.out), monitor.out

    assert env.fab("stop", "--wait", "60").returncode == 0
    ended = time.time()
    wait_until(fired.exists, idle_s + 15, "autostop to fire after the training ended")
    assert fired.stat().st_mtime - ended >= idle_s - 1.5  # not before the idle time had passed
    # the agent records the firing once its command has ended, with its exit code (host_agent.py): a moment after
    record_file = env.runs / ".agent" / "fired.json"
    wait_until(record_file.exists, 30, "the agent to record the firing in fired.json")
    record = json.loads(record_file.read_text())
    assert record["exit_code"] == 0 and str(fired) in record["command"]

    # a reboot: the agent is gone; the @reboot line brings it back, armed
    old_pid = env.agent_pid()
    subprocess.run(["kill", str(old_pid)], check=True)
    wait_until(lambda: subprocess.run(["kill", "-0", str(old_pid)], capture_output=True).returncode != 0, 10, "the agent to end")
    boot_line = next(line for line in table.splitlines() if line.startswith("@reboot"))
    subprocess.run(["sh", "-c", boot_line.removeprefix("@reboot ")], check=True, timeout=30)
    wait_until(lambda: env.agent_pid() not in (None, old_pid), 10, "the agent to start again at boot")
    monitor = env.fab("monitor")
    assert re.search(r"runs its command at \d\d:\d\d if still idle \(last fired at \d\d:\d\d, exit 0\)", monitor.out), monitor.out

    # disarmed: the boot entry goes and nothing fires any more
    fired.unlink()
    cancel = env.fab("autostop", "--cancel")
    assert cancel.returncode == 0 and "autostop: off" in cancel.out, cancel.out
    assert "@reboot" not in (env.fake_bin / "crontab.txt").read_text()
    time.sleep(idle_s + 2)
    assert not fired.exists()
    assert re.search(r"autostop\s+off", env.fab("monitor").out)


@pytest.fixture
def metadata_service():
    MetadataService.notice = None
    server = ThreadingHTTPServer(("127.0.0.1", 0), MetadataService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_spot_notice_stops_the_run_as_preempted_and_it_continues_on_another_host(standin_ready, fake_bin_host, standin_venv,
                                                                                   metadata_service, tmp_path):
    epochs = 30
    first = standin_ready
    first.configure(epochs=epochs)
    first.write(price_per_hour=1.2, ec2={"metadata_url": metadata_service, "poll_seconds": 0.5, "spot_grace_seconds": 60})
    assert first.fab("train", "--run-name", "spot-run").returncode == 0
    wait_until(lambda: status(first).get("epoch", 0) >= 2, 180, "two epochs")
    monitor = first.fab("monitor")
    assert "g5.xlarge (spot, EC2)" in monitor.out and "$1.2/h" in monitor.out and "more to finish" in monitor.out, monitor.out

    MetadataService.notice = {"action": "terminate", "time": "2026-11-25T17:00:00Z"}
    record = wait_until(lambda: exit_record(first), 120, "the run to stop on the notice")
    assert record["exit_code"] == 3 and record["preempted"]["notice"]["action"] == "terminate", record
    monitor = first.fab("monitor")
    assert monitor.returncode == 7 and "PREEMPTED" in monitor.out and "--resume-from" in monitor.out, monitor.out
    stopped_at = status(first)["epoch"]
    assert 2 <= stopped_at < epochs

    results = tmp_path / "results"
    fetched = first.fab("fetch-results", "--backup", "--dest", results)
    assert fetched.returncode == 0, fetched.out
    run_copy = results / "local" / "spot-run"
    assert (run_copy / "backup").is_dir() and (run_copy / "history.csv").is_file()
    without = first.fab("-H", "local", "deploy-full", "--resume-from", results / "nothing-here")
    assert without.returncode == 2 and "not a fetched run directory" in without.out, without.out

    second = on_standin(fake_bin_host(), standin_venv)  # another host: other sshd, other remote dirs (data paths differ: the split is remapped)
    second.data.parent.mkdir(parents=True)
    subprocess.run(["cp", "-r", str(first.data), str(second.data)], check=True)
    second.write(train_config=first.inventory["train_config"], price_per_hour=1.2)
    deploy = second.fab("deploy-full", "--resume-from", run_copy, timeout=600)
    assert deploy.returncode == 0, deploy.out
    assert "upload-run" in deploy.out and "continuing run spot-run" in deploy.out, deploy.out
    assert second.current_run() == "spot-run"
    wait_until(lambda: exit_record(second), 300, "the resumed run to finish")
    assert exit_record(second)["exit_code"] == 0, (second.runs / "spot-run" / "train.log").read_text()[-3000:]

    run_dir = second.runs / "spot-run"
    with open(run_dir / "history.csv") as f:
        history = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert history == list(range(epochs)), history  # every epoch once: none lost beyond the running one, none twice
    assert "Data moved" in (run_dir / "train.log").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    compute = metrics["compute"]
    assert compute["hours"] > 0 and compute["price_per_hour"] == 1.2
    assert abs(compute["cost_usd"] - compute["hours"] * 1.2) <= 0.01
    fetched = second.fab("fetch-results", "--dest", tmp_path / "results 2")
    assert "Compute:" in fetched.out and "at $1.2/h" in fetched.out, fetched.out
