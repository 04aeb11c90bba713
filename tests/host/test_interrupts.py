"""Ctrl-C and the exit codes of the deploy tasks, against the real local sshd host.

Ctrl-C is sent as a terminal sends it: SIGINT to the whole foreground process group of `fab`.
"""

import json
import os
import signal
import subprocess
import time

import pytest

from deploy.demo.localhost import processes_under
from tests.support.helpers import ROOT, wait_until
from tests.support.warm_runner import FAB

pytestmark = [pytest.mark.ssh, pytest.mark.slow]


def start(env, *args):
    # PYTHONFAULTHANDLER: a fab that hangs after Ctrl-C prints its threads' stacks when ctrl_c aborts it
    return subprocess.Popen([str(FAB), *map(str, args)], cwd=ROOT, env={**env.env, "PYTHONFAULTHANDLER": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL, start_new_session=True)


def ctrl_c(proc, timeout=20):
    """SIGINT to `proc`'s process group; returns (exit code, output, seconds it took to exit). A fab still running
    `timeout` s later fails the test with its output and where each of its threads was (SIGABRT: faulthandler)."""
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGABRT)
        out, _ = proc.communicate(timeout=30)
        raise AssertionError(f"fab had not exited {timeout} s after Ctrl-C; its output, then its threads:\n{out}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out, time.monotonic() - t0


def remote(env, word):
    """The host's processes for this env whose command line holds `word`."""
    return {pid: cmd for pid, cmd in processes_under(env.remote_root).items() if word in cmd}


def test_ctrl_c_during_smoke_test_ends_the_remote_step_then_releases_the_lock(host_ready):
    env = host_ready
    proc = start(env, "smoke-test")
    wait_until(lambda: remote(env, "trainer smoke") or proc.poll() is not None, 120, "the smoke test to run on the host")
    assert proc.poll() is None, proc.communicate()[0]
    time.sleep(1)
    code, out, took = ctrl_c(proc)
    assert code == 130, out
    assert took < 15, (took, out)  # not the rest of the smoke test
    assert "error: Interrupted the smoke test on local: its trainer there was ended and the host's lock released. " in out, out
    assert "No training was started" in out and "Next: `fab smoke-test` again, or `fab deploy-full`" in out
    wait_until(lambda: not remote(env, "trainer smoke"), 10, "the host's smoke test to be gone")
    assert not (env.runs / ".lock").exists(), "the lock outlived the task"
    after = env.fab("sync-code")  # the next host-changing task is not refused
    assert after.returncode == 0, after.out


def test_a_wrong_key_is_exit_2_naming_key_and_user_and_dash_i_beats_the_inventory(deploy_env, ssh_host, tmp_path):
    env = deploy_env
    wrong = tmp_path / "wrong key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    target = f"{ssh_host.user}@127.0.0.1:{ssh_host.port}"

    refused = env.fab("-H", target, "-i", wrong, "unlock")
    assert refused.returncode == 2, refused.out
    assert str(wrong) in refused.out and repr(ssh_host.user) in refused.out and "refused the SSH login" in refused.out

    # the inventory names the right key for 127.0.0.1; -i on the command line still wins
    inventory_says_right = env.fab("-H", "127.0.0.1", "-i", wrong, "unlock")
    assert inventory_says_right.returncode == 2 and str(wrong) in inventory_says_right.out, inventory_says_right.out
    env.write(hosts={"local": {**env.inventory["hosts"]["local"], "key_file": str(wrong)}})
    inventory_says_wrong = env.fab("-H", "127.0.0.1", "-i", ssh_host.key_file, "unlock")
    assert inventory_says_wrong.returncode == 0 and "not locked" in inventory_says_wrong.out, inventory_says_wrong.out


def test_deploy_full_resume_from_a_run_the_host_has_stops_before_step_1(host_ready, tmp_path):
    env = host_ready
    run = tmp_path / "results" / "other" / "moved"
    (run / "backup").mkdir(parents=True)
    for name in ("config.yaml", "normalization.npz", "backup/training_metadata.json"):
        (run / name).write_text("{}")
    (run / "manifest.json").write_text(json.dumps({"dirs": ["/old/crema-d"], "files": []}))
    (run / "split.json").write_text(json.dumps({"train": [], "val": [], "test": []}))
    (env.runs / "moved").mkdir(parents=True)
    (env.runs / "moved" / "config.yaml").write_text("{}")
    t0 = time.monotonic()
    out = env.fab("deploy-full", "--resume-from", run)
    assert out.returncode == 2, out.out
    assert "already exists on the host" in out.out and "nothing was done on the host" in out.out
    assert "[1/" not in out.out and "provision" not in out.out.split("already exists")[0].split("host:")[-1]
    assert time.monotonic() - t0 < 30
    assert json.loads(json.dumps(sorted(p.name for p in (env.runs / "moved").iterdir()))) == ["config.yaml"]


def test_a_step_ended_by_ctrl_c_is_exactly_its_own_process_group(standin_ready):
    """The remote step's processes carry its token; ending it leaves the host agent and trainings alone."""
    env = standin_ready  # the process around the training only: the stand-in trainer (tests/support/standin_trainer.py)
    env.configure(400)
    assert env.fab("train", "--run-name", "stays").returncode == 0
    wait_until(lambda: remote(env, "trainer train"), 60, "the training to start")
    proc = start(env, "logs", "--lines", "5")  # quick: just check a monitor-like task is unaffected
    proc.communicate(timeout=60)
    follow = start(env, "monitor", "--follow")
    wait_until(lambda: remote(env, "follow_log.sh"), 60, "monitor --follow to follow the log on the host")
    code, out, took = ctrl_c(follow)
    assert took < 15, out
    wait_until(lambda: not remote(env, "follow_log.sh"), 10, "the host's log follower to end")
    assert remote(env, "trainer train"), "Ctrl-C of monitor --follow must not touch the training"
    assert env.fab("stop", "--wait", "60").returncode == 0
