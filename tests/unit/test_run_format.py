"""The run and host format has one owner (remote_scripts/run_format.py): the trainer, the laptop and the host scripts
read it from there, and the shell scripts, which cannot import it, spell the same names (held equal here)."""

import re
import sys

from tests.support.helpers import ROOT
from trainer.run_format import run_format

sys.path.insert(0, str(ROOT / "remote_scripts"))
import host_files  # noqa: E402 - the host's scripts, standard library only
import run_state  # noqa: E402


def test_the_trainer_the_laptop_and_the_host_scripts_share_one_module():
    import deploy.inventory.schema
    import deploy.recovery.machine
    import trainer.errors
    import trainer.names
    import trainer.storage.layout
    import trainer.training.run

    assert sys.modules["run_format"] is run_format  # a host script imported next to the trainer gets the very same module
    assert host_files.RUN_NAME is run_format.RUN_NAME is trainer.names.RUN_NAME is trainer.storage.layout.RUN_NAME
    assert trainer.training.run.Stopped.exit_code == run_format.STOPPED == deploy.recovery.machine.STOPPED
    assert trainer.errors.Superseded.exit_code == run_format.SUPERSEDED == deploy.recovery.machine.SUPERSEDED
    assert run_state.derive_state({"exit_code": run_format.STOPPED}, False, None) == "stopped"
    assert run_state.derive_state({"exit_code": run_format.SUPERSEDED}, False, None) == "superseded"

    defaults = deploy.inventory.schema.DEFAULTS
    agent = run_format.AGENT_DEFAULTS
    assert defaults["tmux_session"] == agent["session"]
    assert {k: defaults["ec2"][k] for k in ("metadata_url", "poll_seconds", "spot_grace_seconds")} == {
        k: agent[k] for k in ("metadata_url", "poll_seconds", "spot_grace_seconds")}
    assert tuple(defaults["autostop"]["wait_for"]) == run_format.WAIT_FOR == deploy.inventory.schema.WAIT_FOR


def test_the_shell_scripts_spell_the_same_names():
    import deploy.inventory.schema

    monitor = (ROOT / "remote_scripts" / "monitor_training.sh").read_text()
    assert re.search(r'SESSION="\$\{SESSION:-([^}]+)\}"', monitor).group(1) == run_format.SESSION
    assert f'"$RUNS_DIR/{run_format.CURRENT}"' in monitor
    assert re.search(r'RUNS_DIR="\$\{RUNS_DIR:-\$HOME/([^}]+)\}"', monitor).group(1) == "facenet-runs"
    assert re.search(r'venv="\$\{VENV:-\$HOME/([^}]+)\}"', monitor).group(1) == "facenet-venv"
    remote = deploy.inventory.schema.DEFAULTS["remote"]
    assert (remote["runs_dir"], remote["venv"]) == ("~/facenet-runs", "~/facenet-venv")  # the same folders as the monitor's
    codes = re.search(r"# Exit code: (.*?) \(run_state", monitor, re.S).group(1)
    assert {int(c) for c in re.findall(r"(\d+) [a-z]", codes)} == set(run_state.EXIT_CODES.values()), codes
    follow = (ROOT / "remote_scripts" / "follow_log.sh").read_text()
    assert f'"$run_dir/{run_format.EXIT}"' in follow
    assert follow.count(f'"$run_dir/{run_format.LOG}"') == 2
    launch = (ROOT / "remote_scripts" / "launch_training.sh").read_text()
    assert f'log="$run_dir/{run_format.LOG}"' in launch
    assert f'>> "$run_dir/{run_format.STORAGE_LOG}"' in launch and f"$run_dir/{run_format.STORAGE})" in launch
    # .storage.lock is taken by the uploader itself (trainer/storage/uploader.py, from run_format): no shell script spells it
    assert not [p.name for p in (ROOT / "remote_scripts").glob("*.sh") if run_format.STORAGE_LOCK in p.read_text()]


def test_fab_sessions_copies_of_the_host_lock_and_the_upload_markers_are_run_formats():
    """fab_session.py runs as `python3 -c TEXT` before the code is synced: it carries its own copies."""
    import fab_session
    import host_activity

    import deploy.host.lock
    import deploy.host.sync
    import trainer.data.validation

    assert (fab_session.LOCK_HOLDER, fab_session.LOCK_LEASE) == (run_format.LOCK_HOLDER, run_format.LOCK_LEASE)
    assert (fab_session.PARTIAL_DIR, fab_session.UPLOAD_MARKER) == (run_format.UPLOAD_PARTIAL_DIR, run_format.UPLOAD_MARKER)
    assert deploy.host.lock.LEASE_SECONDS == host_activity.DEFAULT_LEASE_SECONDS == run_format.LEASE_SECONDS
    assert (deploy.host.sync.PARTIAL_DIR, deploy.host.sync.UPLOAD_MARKER) == (run_format.UPLOAD_PARTIAL_DIR, run_format.UPLOAD_MARKER)
    assert trainer.data.validation.UPLOAD_MARKER == run_format.UPLOAD_MARKER
    text = (ROOT / "remote_scripts" / "fab_session.py").read_text()
    assert "import run_format" not in text and "from run_format" not in text  # it could not: nothing lies beside it


def test_an_atomic_write_leaves_no_temp_file_and_replaces_a_link_without_following_it(tmp_path):
    target, link = tmp_path / "elsewhere.json", tmp_path / run_format.STATUS
    target.write_text("{}")
    link.symlink_to(target)
    run_format.write_json(link, {"state": "running"})
    assert not link.is_symlink() and link.read_text() == '{\n "state": "running"\n}' and target.read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere.json", run_format.STATUS]
