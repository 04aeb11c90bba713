"""`fab` against a real OpenSSH server on 127.0.0.1, with real rsync and tmux: the deploy tasks.

Every remote and local path has spaces in it (see tests/support/deploy_env.py's DeployEnv), so quoting is tested
by every test here.
"""

import json
import re
import shutil
import signal
import subprocess

import numpy as np
import pytest

from tests.support.helpers import TINY_CONFIG, run_trainer, wait_until, write_clip, write_config

pytestmark = [pytest.mark.ssh, pytest.mark.slow]


def synth(path, clips=120, seed=5):
    from trainer.data.synth import write_corpus

    write_corpus(path, "crema-d", clips=clips, seed=seed)
    return path


def test_deploy_full_trains_on_the_host_and_a_second_deploy_resends_nothing(deploy_env, ssh_host, fresh_venv, tmp_path):
    """The README's flow: `fab -H user@ip -i key deploy-full`, then every later task with no flags.
    The host's Python prints TensorFlow-like noise on stderr at every exit (see conftest.host_venv):
    results travel as JSON, so it changes nothing."""
    synth(deploy_env.data)
    tiny = write_config(tmp_path / "tiny.yaml", **{**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "epochs": 2}})
    deploy_env.write(hosts={}, train_config=str(tiny), remote={**deploy_env.inventory["remote"], "venv": str(fresh_venv)})
    first = deploy_env.fab("-H", f"{ssh_host.user}@127.0.0.1:{ssh_host.port}", "-i", ssh_host.key_file, "deploy-full",
                           "--run-name", "first", timeout=600)
    assert first.returncode == 0, first.out
    assert first.out.startswith(f"host: {ssh_host.user}@127.0.0.1:{ssh_host.port}, key {ssh_host.key_file}")
    for i, step in enumerate(["provision", "sync-code", "sync-data", "preflight", "smoke-test", "train"], 1):
        assert re.search(rf"\[{i}/6\] {step}\n", first.out) and re.search(rf"✓ {step} \d+\.\d s", first.out), step
    assert "Installing CPU requirements" in first.out and "TensorFlow sees 0 GPU(s), as nvidia-smi does" in first.out
    assert "120 file(s) sent" in first.out and "verified: the host holds the same files and bytes (120 files" in first.out
    assert "Smoke test passed" in first.out and "fab monitor" in first.out

    # The host is remembered: no -H from here on. --follow streams the log and ends with the run.
    follow = deploy_env.fab("monitor", "--follow", timeout=300)
    assert follow.returncode == 0, follow.out
    assert follow.out.startswith(f"host: {ssh_host.user}@127.0.0.1:{ssh_host.port}, key {ssh_host.key_file}")
    assert re.search(r"Epoch (\d+)/\1\b", follow.out) and "FINISHED" in follow.out and "exit code 0" in follow.out
    run = deploy_env.runs / "first"
    assert json.loads((run / "exit.json").read_text())["exit_code"] == 0
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    assert "Reading clips from the pack in" in (run / "train.log").read_text()  # packed at preflight: no NPZ read per clip
    assert (run / "best.keras").is_file() and (run / "metrics.json").is_file()
    assert not list(run.glob("*.png")) and "Pictures: none drawn (train.pictures is false)" in (run / "train.log").read_text()
    assert (deploy_env.remote_root / "project dir" / "trainer" / "training" / "run.py").is_file()
    remote_files = sorted(p.name for p in (deploy_env.remote_root / "data dir" / "crema-d").rglob("*.npz"))
    assert remote_files == sorted(p.name for p in deploy_env.data.rglob("*.npz"))

    # A second deploy resends nothing: its first three steps, which are all that could resend or reinstall (the
    # smoke test and the training would only repeat what the first deploy proved), as one command line.
    second = deploy_env.fab("provision", "sync-code", "sync-data", timeout=600)
    assert second.returncode == 0, second.out
    assert "up to date (requirements unchanged)" in second.out and "Installing" not in second.out
    assert re.search(r"code \S+: .* already up to date\n", second.out), second.out  # sync-code
    assert re.search(r"  -> .*: already up to date\n", second.out), second.out  # sync-data
    assert "file(s) sent" not in second.out and "file(s) updated" not in second.out
    assert deploy_env.fab("stop").returncode == 0


def test_missing_or_empty_local_data_dir_fails_before_anything_reaches_the_host(deploy_env):
    proc = deploy_env.fab("-H", "local", "deploy-full")
    assert proc.returncode == 2, proc.out
    assert f"Local data directory {deploy_env.data} " in proc.out and "does not exist" in proc.out
    assert "Nothing was uploaded" in proc.out
    assert not deploy_env.remote_root.exists()  # not even provisioning or the code sync ran

    deploy_env.data.mkdir(parents=True)
    (deploy_env.data / "notes.txt").write_text("features go here")
    proc = deploy_env.fab("-H", "local", "sync-data")
    assert proc.returncode == 2 and "holds no *.npz files" in proc.out
    assert not (deploy_env.remote_root / "data dir").exists()


def test_data_that_would_not_train_stops_at_preflight_with_the_summary(deploy_env):
    # The original failure: the files hold 'features', not 'video_features'.
    for i, emotion in enumerate(["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"] * 2):
        write_clip(deploy_env.data / f"10{10 + i}_IWL_{emotion}_XX.npz", frames=12, key="features")
    proc = deploy_env.fab("-H", "local", "deploy-full")
    assert proc.returncode == 1, proc.out
    assert "✓ sync-data" in proc.out and "✗ preflight failed" in proc.out
    assert "deploy-full stopped at step preflight" in proc.out
    assert "12 files have no key 'video_features'; they have keys ['features']: set data.feature_key" in proc.out
    assert "[5/6]" not in proc.out and not (deploy_env.runs / ".current").exists()
    assert subprocess.run(["tmux", "has-session", "-t", "=" + deploy_env.inventory["tmux_session"]]).returncode != 0


def test_a_running_training_blocks_a_second_train_until_restart(standin_env, tmp_path):
    deploy_env = standin_env  # the process around the training only: the stand-in trainer (tests/support/standin_trainer.py)
    synth(deploy_env.data, clips=60)
    long = write_config(tmp_path / "long config.yaml", **{**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "epochs": 200}})
    deploy_env.write(train_config=str(long), default_host="local")
    for task in ("provision", "sync-code", "sync-data"):
        assert deploy_env.fab(task).returncode == 0, task
    assert deploy_env.fab("train", "--run-name", "one").returncode == 0
    again = deploy_env.fab("train", "--run-name", "two")
    assert again.returncode == 1
    assert "Training one is running on the host" in again.out and "--restart" in again.out
    assert not (deploy_env.runs / "two").exists()
    redeploy = deploy_env.fab("deploy-full")  # would rewrite the data under the running training
    assert redeploy.returncode == 1 and "is running on the host" in redeploy.out and "fab deploy-full --restart" in redeploy.out
    assert "[1/6]" not in redeploy.out
    restart = deploy_env.fab("train", "--restart", "--run-name", "three", timeout=300)
    assert restart.returncode == 0, restart.out
    assert json.loads((deploy_env.runs / "one" / "exit.json").read_text())["exit_code"] == 3  # stopped cleanly
    assert deploy_env.current_run() == "three"
    assert deploy_env.fab("stop", "--wait", "5").returncode == 0


def test_provision_installs_from_the_requirements_and_remembers_them(deploy_env, fresh_venv):
    """The marker holds the requirements installed: a new one reinstalls; the same ones, or fewer, do not."""
    deploy_env.write(default_host="local", remote={**deploy_env.inventory["remote"], "venv": str(fresh_venv)})
    assert deploy_env.fab("provision").returncode == 0
    again = deploy_env.fab("provision")
    assert again.returncode == 0 and "up to date" in again.out
    deploy_env.write(pip={"extra_args": ["--no-index"], "cpu": ["numpy>=1.0", "pyyaml", "rich", "tensorflow-cpu"]})
    changed = deploy_env.fab("provision")
    assert changed.returncode == 0 and "Installing CPU requirements" in changed.out, changed.out
    deploy_env.write(pip={"extra_args": ["--no-index"], "cpu": ["numpy>=1.0", "pyyaml", "tensorflow-cpu"]})
    fewer = deploy_env.fab("provision")  # rich no longer wanted: it stays, and nothing is installed
    assert fewer.returncode == 0 and "up to date" in fewer.out, fewer.out
    deploy_env.write(pip={"extra_args": ["--no-index"], "cpu": ["no-such-package-facenet==1.0"]})
    broken = deploy_env.fab("provision")
    assert broken.returncode == 1 and "pip install failed on the host" in broken.out and "no-such-package-facenet" in broken.out
    marker = (fresh_venv / ".facenet-requirements")
    assert not marker.exists()  # the failed install may have changed the venv: the next provision installs again
    deploy_env.write(pip={"extra_args": ["--no-index", "--extra-index-url", "https://user:token-facenet@index.example/simple"],
                          "cpu": ["numpy>=1.0", "pyyaml", "tensorflow-cpu"]})
    assert deploy_env.fab("provision").returncode == 0 and "token-facenet" not in marker.read_text()


def test_two_provisions_of_one_venv_take_turns_and_install_once(deploy_env, ssh_host, fresh_venv, tmp_path):
    """Two inventories with one venv and runs_dir of their own (each its own host lock): the one that waits for the
    venv's lock finds the other's install done and checked, and installs nothing."""
    from tests.support.deploy_env import DeployEnv

    (tmp_path / "other deploy").mkdir()
    other = DeployEnv(tmp_path / "other deploy", ssh_host, fresh_venv)
    try:
        deploy_env.write(default_host="local", remote={**deploy_env.inventory["remote"], "venv": str(fresh_venv)})
        other.write(default_host="local")
        procs = [env.popen("provision") for env in (deploy_env, other)]
        outs = [proc.communicate(timeout=300)[0] for proc in procs]
    finally:
        other.cleanup()
    assert [proc.returncode for proc in procs] == [0, 0], outs
    assert sum("requirements installed in" in out for out in outs) == 1, outs
    assert sum("up to date" in out for out in outs) == 1, outs  # right away, or after its wait for the lock
    assert (fresh_venv / ".facenet-requirements").is_file()


def test_a_provision_waits_for_the_venvs_lock_and_names_it_when_it_cannot_take_it(deploy_env, fresh_venv):
    """Another holder of the venv's lock (here this test, as another provision would): the provision says it waits,
    and installs once it is free; a lock that cannot be made is a clear error naming it, before any install."""
    import fcntl
    import time

    from deploy.demo.localhost import processes_under
    from deploy.host.provision import VENV_LOCK, VENV_LOCKER

    deploy_env.write(default_host="local", remote={**deploy_env.inventory["remote"], "venv": str(fresh_venv)})
    lock = fresh_venv / VENV_LOCK
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = deploy_env.popen("provision")
        # its holder on the host has found the lock taken once it runs (it then says so and polls every second)
        wait_until(lambda: [c for c in processes_under(fresh_venv).values() if VENV_LOCKER[:20] in c], 120,
                   "the provision's lock holder to start")
        time.sleep(2)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    assert out.index("Waiting for another provision of the venv") < out.index("requirements installed in"), out

    (fresh_venv / ".facenet-requirements").unlink()
    lock.unlink()
    lock.mkdir()  # a lock that cannot be opened
    refused = deploy_env.fab("provision")
    assert refused.returncode == 1 and f"Could not take the lock of the venv {fresh_venv} ({lock}): cannot open" in refused.out, refused.out
    assert "Installing" not in refused.out and "Traceback" not in refused.out


def test_sync_code_mirrors_and_removes_stale_files(deploy_env):
    deploy_env.write(default_host="local")
    assert deploy_env.fab("sync-code").returncode == 0
    project = deploy_env.remote_root / "project dir"
    stale = project / "trainer" / "old_module.py"
    stale.write_text("x = 1\n")
    proc = deploy_env.fab("sync-code")
    assert proc.returncode == 0 and "already up to date" in proc.out
    assert not stale.exists()
    assert (project / ".code-version").read_text().strip()
    assert 'SESSION=' in (project / ".deploy.env").read_text()
    assert not (project / "tests").exists() and not (project / ".git").exists()
    # Whatever else lives in project_dir is not the code's: a sync never deletes it.
    theirs = [project / "data" / "1001_IWL_ANG_XX.npz", project / ".ssh" / "authorized_keys", project / "notes.txt"]
    for path in theirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("not code")
    assert deploy_env.fab("sync-code").returncode == 0
    assert all(path.read_text() == "not code" for path in theirs)


def test_several_hosts_in_dash_h_are_refused_not_run_as_separate_trainings(deploy_env):
    proc = deploy_env.fab("-H", "local,local", "deploy-full")
    assert proc.returncode == 2 and "-H names several hosts (local,local)" in proc.out and "[1/6]" not in proc.out
    assert not deploy_env.remote_root.exists()


def test_no_host_anywhere_is_a_clear_error(deploy_env):
    proc = deploy_env.fab("monitor")
    assert proc.returncode == 2
    assert "No host to act on: pass -H user@address, or set default_host" in proc.out


def test_sync_data_is_verified_and_mirrors_the_local_dir(deploy_env):
    synth(deploy_env.data, clips=20)
    deploy_env.write(default_host="local")
    assert deploy_env.fab("sync-data").returncode == 0
    victim = sorted(deploy_env.data.glob("*.npz"))[0]
    victim.unlink()
    np.savez(deploy_env.data / "1090_IWL_ANG_XX.npz", video_features=np.ones((5, 512), np.float32))
    proc = deploy_env.fab("sync-data")
    assert proc.returncode == 0, proc.out
    assert "1 file(s) sent" in proc.out and "(20 files" in proc.out
    remote = deploy_env.remote_root / "data dir" / "crema-d"
    assert not (remote / victim.name).exists() and (remote / "1090_IWL_ANG_XX.npz").exists()


def test_host_keys_are_trusted_on_first_use_then_a_changed_key_is_refused(deploy_env, tmp_path):
    deploy_env.write(default_host="local")
    assert deploy_env.fab("provision").returncode == 0
    known = deploy_env.root / "state" / "known_hosts"
    port = deploy_env.inventory["hosts"]["local"]["port"]
    assert f"[127.0.0.1]:{port} ssh-ed25519" in known.read_text()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "impostor")], check=True)
    impostor = (tmp_path / "impostor.pub").read_text().split()[:2]
    known.write_text(f"[127.0.0.1]:{port} {' '.join(impostor)}\n")
    proc = deploy_env.fab("provision")
    assert proc.returncode == 2, proc.out  # a bad input (the host key): nothing was done on the host
    assert "is not the one seen at first contact" in proc.out and str(known) in proc.out and "Traceback" not in proc.out


def test_an_unreachable_host_is_a_clear_error(deploy_env):
    from deploy.demo.localhost import free_port

    deploy_env.write(hosts={"local": {**deploy_env.inventory["hosts"]["local"], "port": free_port()}}, default_host="local")
    proc = deploy_env.fab("monitor")
    assert proc.returncode == 6 and "cannot reach the host over SSH" in proc.out and "Traceback" not in proc.out


def test_an_interrupted_data_upload_resumes_where_it_stopped(deploy_env):
    synth(deploy_env.data, clips=60)
    local_files = len(list(deploy_env.data.glob("*.npz")))
    deploy_env.write(default_host="local", rsync_args=["--bwlimit=1500"])  # ~10 MB at 1.5 MB/s: time to interrupt
    proc = deploy_env.popen("sync-data")
    remote = deploy_env.remote_root / "data dir" / "crema-d"
    wait_until(lambda: any(remote.glob("*.npz")), 60, "the first clip uploaded")  # not a fixed sleep: a loaded machine starts slower
    proc.send_signal(signal.SIGINT)  # Ctrl-C (tests/host/test_interrupts.py sends it to the whole process group, as a terminal does)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "Interrupted. Run the same command again" in out, out
    assert not (deploy_env.runs / ".lock").exists()  # released on the way out
    arrived = len(list(remote.glob("*.npz")))
    assert 0 < arrived < local_files
    marker = remote / ".facenet-upload-incomplete"
    assert json.loads(marker.read_text())["files"] == local_files, "the unverified upload is marked on the host"
    shutil.rmtree(remote / ".rsync-partial", ignore_errors=True)  # as if cut between two files: no partial file to tell
    refused = run_trainer("train", "--data", remote, "--out", deploy_env.root / "runs-here", "--epochs", "1")
    assert refused.returncode == 2, refused.stdout + refused.stderr  # not a training on part of the data set
    assert f"an upload into it has not completed: {arrived} .npz file(s) here, {local_files} file(s) expected" in refused.stderr
    assert str(marker) in refused.stderr and "Run `fab sync-data` again" in refused.stderr
    deploy_env.write(rsync_args=[])
    again = deploy_env.fab("sync-data")
    assert again.returncode == 0, again.out
    sent = int(re.search(r"(\d+) file\(s\) sent", again.out).group(1))
    assert sent <= local_files - arrived + 1  # only what was missing (and the one cut short) travels
    assert f"verified: the host holds the same files and bytes ({local_files} files" in again.out
    assert not marker.exists()  # verified: the trainer takes the folder again


def test_moved_files_are_marked_before_the_upload_and_the_trainer_refuses_what_a_cut_one_left(deploy_env):
    """The same files and bytes in other places (the totals equal the host's): the folder is marked unverified all
    the same before rsync changes it. rsync's --max-size=1 (an inventory rsync_args) sends nothing: its deletions
    alone leave part of the data set, as a Ctrl-C between two files would."""
    synth(deploy_env.data, clips=20)
    deploy_env.write(default_host="local")
    first = deploy_env.fab("sync-data")
    assert first.returncode == 0, first.out
    remote = deploy_env.remote_root / "data dir" / "crema-d"
    marker = remote / ".facenet-upload-incomplete"
    assert not marker.exists()
    (deploy_env.data / "moved").mkdir()
    for clip in sorted(deploy_env.data.glob("*.npz"))[:10]:
        clip.rename(deploy_env.data / "moved" / clip.name)
    deploy_env.write(rsync_args=["--max-size=1"])
    cut = deploy_env.fab("sync-data")
    assert cut.returncode == 1 and "Upload check failed" in cut.out, cut.out
    assert len(list(remote.rglob("*.npz"))) == 10 and marker.exists()
    refused = run_trainer("train", "--data", remote, "--out", deploy_env.root / "runs-here", "--epochs", "1")
    assert refused.returncode == 2 and "an upload into it has not completed" in refused.stderr, refused.stdout + refused.stderr
    deploy_env.write(rsync_args=[])
    again = deploy_env.fab("sync-data")
    assert again.returncode == 0 and "verified: the host holds the same files and bytes (20 files" in again.out, again.out
    assert not marker.exists() and len(list(remote.rglob("*.npz"))) == 20


def test_the_throwaway_host_starts_in_a_folder_whose_path_has_a_space(tmp_path):
    from deploy.demo.localhost import LocalSSHHost

    with LocalSSHHost(tmp_path / "my checkout" / ".demo host") as host:  # make demo from ~/My Projects/facenet-deploy
        out = subprocess.run(["ssh", "-i", str(host.key_file), "-p", str(host.port), "-o", "StrictHostKeyChecking=no",
                              "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", f"{host.user}@127.0.0.1", "echo logged in"],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == "logged in\n", out.stderr
