"""A tampered run directory cannot turn the trainer or the launcher against the host it lands on:
links refused and never written through, every path of the run's JSON checked.
Fast, without SSH; tests/host/test_tampered_run_deploy.py does the same through `fab`."""

import json
import os
import subprocess

import pytest

from tests.support.crafted_run import KEY, OWNER, crafted_run
from tests.support.helpers import ROOT, run_trainer
from trainer.errors import DataError, UserError
from trainer.results.runfiles import check_run_paths, open_log, special_entries


@pytest.fixture
def home(tmp_path):
    """A stand-in for the host user's ~/.ssh, with the owner's key."""
    ssh = tmp_path / "home" / ".ssh"
    ssh.mkdir(parents=True)
    (ssh / "authorized_keys").write_text(OWNER)
    return ssh


def test_the_reproduced_attack_writes_no_key_line_into_authorized_keys(tmp_path, home):
    """Reproduced on a host: manifest.json's data dir holds newlines around a key line, train.log is a link to
    ~/.ssh/authorized_keys; resuming printed "Data moved: <dir> -> ..." through the link, the key line on a line of
    its own. Both halves are refused, and nothing is written anywhere."""
    run = crafted_run(tmp_path, f"/old host\n{KEY}\n/crema-d")
    (run / "train.log").symlink_to(home / "authorized_keys")
    (tmp_path / "data" / "crema-d").mkdir(parents=True)
    proc = run_trainer("train", "--resume", run, "--data", tmp_path / "data" / "crema-d")
    assert (home / "authorized_keys").read_text() == OWNER  # before: the key line was there, on a line of its own
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "train.log (a link to" in proc.stderr and "authorized_keys" in proc.stderr, proc.stderr[-2000:]
    assert KEY not in proc.stdout + proc.stderr.replace(f"\\n{KEY}\\n", "")  # named only escaped, never on a line of its own
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "manifest.json", "normalization.npz", "split.json", "train.log"]


def test_a_data_path_with_a_newline_is_refused_naming_the_file_and_key(tmp_path):
    run = crafted_run(tmp_path, f"/old host\n{KEY}\n/crema-d")
    (tmp_path / "data" / "crema-d").mkdir(parents=True)
    proc = run_trainer("train", "--resume", run, "--data", tmp_path / "data" / "crema-d")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{run / 'manifest.json'} dirs[0] holds a control character" in proc.stderr and "\\n" in proc.stderr
    log = (run / "train.log").read_text()
    assert KEY not in log.splitlines() and "Data moved" not in log
    assert json.loads((run / "manifest.json").read_text())["dirs"] == [f"/old host\n{KEY}\n/crema-d"]  # not rewritten


def test_a_run_with_links_is_refused_and_nothing_is_written_through_them(tmp_path, home):
    shadow = tmp_path / "shadow"
    shadow.write_text("root:*:19000:0:99999:7:::\n")
    run = crafted_run(tmp_path, "/old/crema-d")
    (run / "history.csv").symlink_to(shadow)
    (run / "logs").symlink_to(home)
    proc = run_trainer("train", "--resume", run)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"history.csv (a link to {shadow})" in proc.stderr and f"logs (a link to {home})" in proc.stderr
    assert shadow.read_text() == "root:*:19000:0:99999:7:::\n" and sorted(p.name for p in home.iterdir()) == ["authorized_keys"]
    assert not (run / "status.json").exists() and not (run / "train.log").exists()


@pytest.mark.parametrize("change, why", [
    (lambda m, s: m["files"][0].update(path="/etc/passwd"), "manifest.json files[0].path: /etc/passwd is not inside the run's data dirs"),
    (lambda m, s: m["files"][0].update(path="/old/crema-d/../../etc/x.npz"), "files[0].path: /old/crema-d/../../etc/x.npz is not inside"),
    (lambda m, s: m["files"][0].update(path="/old/crema-d/a\x1b[2J.npz"), "files[0].path holds a control character"),
    (lambda m, s: m["dirs"].append(["not", "a", "path"]), "manifest.json dirs[1]: expected a path"),
    (lambda m, s: s.update(train=["/etc/shadow"]), "split.json train[0]: /etc/shadow is not inside the run's data dirs"),
    (lambda m, s: s.update(val=["/old/crema-d/other.npz"]), "split.json val[0]: /old/crema-d/other.npz is not an accepted file"),
    (lambda m, s: s.update(test="/old/crema-d"), "split.json test: expected a list of files"),
])
def test_every_path_of_the_runs_json_is_checked(tmp_path, change, why):
    run = crafted_run(tmp_path, "/old/crema-d")
    check_run_paths(run)  # the run as the trainer wrote it passes
    manifest, split = json.loads((run / "manifest.json").read_text()), json.loads((run / "split.json").read_text())
    change(manifest, split)
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "split.json").write_text(json.dumps(split))
    with pytest.raises(DataError) as e:
        check_run_paths(run)
    assert why in str(e.value), str(e.value)


def test_a_cv_plans_data_dirs_are_checked(tmp_path):
    run = crafted_run(tmp_path, "/old/crema-d")
    (run / "cv-plan.json").write_text(json.dumps({"folds": 2, "data_dirs": [f"/data\n{KEY}"], "test_actors": [[], []]}))
    with pytest.raises(DataError, match=r"cv-plan.json data_dirs\[0\] holds a control character"):
        check_run_paths(run)


def test_special_entries_names_links_fifos_and_sockets_without_following_links(tmp_path):
    import socket

    run = tmp_path / "run"
    (run / "logs" / "train").mkdir(parents=True)
    (run / "history.csv").symlink_to("/etc/shadow")
    (run / "logs" / "train" / "events").symlink_to(tmp_path)
    os.mkfifo(run / "pipe")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(run / "sock"))
        (run / "a\x1bname").write_text("x")  # a regular file: fine, whatever its name
        (run / "outside").symlink_to(tmp_path)  # a link to a folder is not walked into
        assert special_entries(run) == ["history.csv (a link to /etc/shadow)", f"logs/train/events (a link to {tmp_path})",
                                        f"outside (a link to {tmp_path})", "pipe (a FIFO)", "sock (a socket)"]


def test_logs_are_never_opened_through_a_link(tmp_path):
    target = tmp_path / "target"
    target.write_text("precious\n")
    (tmp_path / "train.log").symlink_to(target)
    with pytest.raises(UserError, match="train.log: it is a link"):
        open_log(tmp_path / "train.log")
    os.link(target, tmp_path / "hard.log")
    with pytest.raises(UserError, match="hard.log: the file has other names"):
        open_log(tmp_path / "hard.log")
    with open_log(tmp_path / "plain.log") as f:
        f.write("one\n")
    with open_log(tmp_path / "plain.log") as f:
        f.write("two\n")
    assert (tmp_path / "plain.log").read_text() == "one\ntwo\n" and target.read_text() == "precious\n"


def test_status_files_replace_a_link_never_write_through_it(tmp_path):
    from trainer.training.status import write_json_atomic

    target = tmp_path / "target"
    target.write_text("precious\n")
    (tmp_path / "status.json").symlink_to(target)
    write_json_atomic(tmp_path / "status.json", {"state": "running"})
    assert not (tmp_path / "status.json").is_symlink() and target.read_text() == "precious\n"
    (tmp_path / f".metrics.json.{os.getpid()}.tmp").symlink_to(target)  # a link at the temp name: removed, never followed
    write_json_atomic(tmp_path / "metrics.json", {"x": 1})
    assert target.read_text() == "precious\n" and not (tmp_path / "metrics.json").is_symlink()
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"x": 1}


def fake_venv(root):
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("#!/bin/bash\necho 'the trainer ran'\n")
    (venv / "bin" / "python").chmod(0o755)
    return venv


def test_the_launcher_refuses_a_run_dir_holding_a_link_with_an_exit_record(tmp_path, home):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "train.log").symlink_to(home / "authorized_keys")
    (run / ".exit.pending").symlink_to(home / "authorized_keys2")  # the launcher's own record, a dangling link
    proc = subprocess.run(["bash", ROOT / "remote_scripts" / "launch_training.sh", fake_venv(tmp_path), ROOT, run, "train"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    record = json.loads((run / "exit.json").read_text())
    assert record["exit_code"] == 2 and "refused to start" in record["reason"] and f"train.log (l {home}/authorized_keys)" in record["reason"]
    assert (home / "authorized_keys").read_text() == OWNER and sorted(p.name for p in home.iterdir()) == ["authorized_keys"]
    assert (run / "train.log").is_symlink()  # left as found, for the owner to look at

    plain = tmp_path / "runs" / "r2"
    ok = subprocess.run(["bash", ROOT / "remote_scripts" / "launch_training.sh", fake_venv(tmp_path / "v2"), ROOT, plain, "train"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "the trainer ran" in (plain / "train.log").read_text()


def test_upload_run_checks_again_before_anything_reaches_the_host(tmp_path):
    """deploy-full checks the run before provisioning; a link that appears in the minutes after is refused at upload."""
    from types import SimpleNamespace

    from deploy.errors import LocalInputError
    from deploy.host.sync import upload_run

    run = crafted_run(tmp_path, "/old/crema-d")
    (run / "logs").symlink_to(tmp_path)
    never = SimpleNamespace(conn=None)  # no connection: the refusal comes first
    with pytest.raises(LocalInputError, match=rf"Refusing to upload: .* holds 1 entry .*logs \(a link to {tmp_path}\)"):
        upload_run(never, SimpleNamespace(remote={"runs_dir": "/runs"}), run, print)
