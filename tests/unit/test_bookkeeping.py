"""remote_scripts/fab_session.py on its own: the bookkeeping command a `fab` invocation sends first.

It runs here as on the host (a subprocess with pipes for the SSH channel): the lock, beats and
the release, the end of input without a release, the data counts as `find` counts them, the
training check from the host's own run_state.py. Fast: no sshd, no TensorFlow.
"""

import json
import os
import subprocess
import sys
import time

from tests.support.helpers import ROOT

HELPER = ROOT / "remote_scripts" / "fab_session.py"


def start(request):
    return subprocess.Popen([sys.executable, str(HELPER), json.dumps(request)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def say(proc, word):
    proc.stdin.write(word + "\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def lock_request(runs, token, task="sync-code sync-data"):
    return {"dir": str(runs / ".lock"), "holder": {"task": task, "by": "me@laptop", "pid": 1, "token": token, "lease_seconds": 180}}


def test_one_holder_at_a_time_beats_renew_its_lease_and_only_its_release_removes_the_lock(tmp_path):
    runs = tmp_path / "runs dir"
    heartbeat = runs / ".agent" / "heartbeat"
    first = start({"heartbeat": str(heartbeat), "lock": lock_request(runs, "t1")})
    try:
        assert json.loads(first.stdout.readline()) == {"lock": {"acquired": True}}
        assert heartbeat.is_file() and (runs / ".lock" / "lease").is_file()
        refused = subprocess.run([sys.executable, str(HELPER), json.dumps({"lock": lock_request(runs, "t2", "provision"),
                                                                           "training": {"scripts": str(ROOT / "remote_scripts")}})],
                                 capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        answer = json.loads(refused.stdout)
        assert answer == {"lock": json.loads((runs / ".lock" / "holder.json").read_text())}  # the holder, and nothing else done
        assert answer["lock"]["task"] == "sync-code sync-data" and refused.returncode == 0

        old = time.time() - 100
        for path in (heartbeat, runs / ".lock" / "lease"):
            os.utime(path, (old, old))
        assert say(first, "beat") == {"beat": True, "held": True}
        assert heartbeat.stat().st_mtime > old + 50 and (runs / ".lock" / "lease").stat().st_mtime > old + 50
        assert "error" in say(first, "what")

        # `fab unlock`, then another command took the lock: the first holder's beats and release leave it alone
        (runs / ".lock" / "holder.json").write_text(json.dumps(lock_request(runs, "t3", "train")["holder"]))
        os.utime(runs / ".lock" / "lease", (old, old))
        assert say(first, "beat") == {"beat": True, "held": False}
        assert (runs / ".lock" / "lease").stat().st_mtime < old + 1
        assert say(first, "release") == {"released": False}
        assert first.wait(10) == 0 and (runs / ".lock" / "holder.json").is_file()

        (runs / ".lock" / "holder.json").write_text(json.dumps(lock_request(runs, "t1")["holder"]))
        again = start({"lock": lock_request(runs, "t4")})  # refused: it answers and ends, holding nothing
        assert "acquired" not in json.loads(again.stdout.readline())["lock"] and again.wait(10) == 0
    finally:
        for proc in (first,):
            proc.kill()
            proc.wait()


def test_a_release_removes_the_lock_and_the_end_of_input_without_one_leaves_it_for_fab_unlock(tmp_path):
    runs = tmp_path / "runs"
    proc = start({"lock": lock_request(runs, "t1")})
    assert json.loads(proc.stdout.readline())["lock"] == {"acquired": True}
    assert say(proc, "release") == {"released": True}
    assert proc.wait(10) == 0 and not (runs / ".lock").exists()

    died = start({"lock": lock_request(runs, "t2")})  # the laptop died, the connection dropped, a third Ctrl-C
    assert json.loads(died.stdout.readline())["lock"] == {"acquired": True}
    died.stdin.close()
    assert died.wait(10) == 0
    assert json.loads((runs / ".lock" / "holder.json").read_text())["token"] == "t2"  # its lease goes stale; `fab unlock` removes it


def test_the_survey_counts_data_as_the_upload_check_does_and_reads_the_run_state_and_code_stamp(tmp_path):
    from deploy.host.sync import data_check_command

    data = tmp_path / "data dir" / "crema-d"
    (data / "a" / "b").mkdir(parents=True)
    (data / "x.npz").write_bytes(b"12345")
    (data / "a" / "b" / "y.npz").write_bytes(b"123")
    (data / "link.npz").symlink_to(data / "x.npz")  # not a regular file
    (data / ".rsync-partial").mkdir()
    (data / ".rsync-partial" / "half.npz").write_bytes(b"1" * 50)  # rsync's partial file: not data yet
    (data / ".facenet-upload-incomplete").write_text('{"files": 3}')  # the deploy's marker of an unverified upload: not data
    with open(data / "a" / "big.npz", "wb") as f:  # 3 GB, sparse: sums past 2**31 (mawk's print gave 3e+09)
        f.truncate(3_000_000_000)
    find = subprocess.run(["bash", "-c", data_check_command(str(data), 0, 0)], capture_output=True, text=True, check=True).stdout.split()
    assert (data / ".facenet-upload-incomplete").exists()  # not what the laptop holds: the marker stays
    project = tmp_path / "project"
    project.mkdir()
    (project / ".code-version").write_text("v1-dirty\n")
    request = {"data": [str(data), str(tmp_path / "missing")], "code": str(project), "dirs": [str(tmp_path / "new" / "dir")],
               "training": {"scripts": str(ROOT / "remote_scripts"), "runs_dir": str(tmp_path / "runs"), "session": "no-such-session"}}
    answer = json.loads(subprocess.run([sys.executable, str(HELPER), json.dumps(request)], capture_output=True, text=True, check=True,
                                       timeout=60, stdin=subprocess.DEVNULL).stdout)
    assert answer["data"] == [[int(v) for v in find], [0, 0]] == [[3, 3_000_000_008], [0, 0]]
    assert answer["incomplete"] == [True, False]
    subprocess.run(["bash", "-c", data_check_command(str(data), 3, 3_000_000_008)], capture_output=True, check=True)
    assert not (data / ".facenet-upload-incomplete").exists()  # the laptop's files and bytes: verified, unmarked
    assert answer["code"] == {"code_version": "v1-dirty\n", "deploy_env": ""}
    assert answer["dirs"] == [str(tmp_path / "new" / "dir")] and (tmp_path / "new" / "dir").is_dir()
    assert answer["training"]["state"] == "none" and answer["training"]["exit_code"] == 5
    request["training"]["scripts"] = str(tmp_path / "no code yet")
    answer = json.loads(subprocess.run([sys.executable, str(HELPER), json.dumps(request)], capture_output=True, text=True, check=True,
                                       timeout=60, stdin=subprocess.DEVNULL).stdout)
    assert answer["training"] is None  # the code is not synced: no launcher has run either


def test_the_survey_lists_a_folder_rsync_copied_as_the_laptop_lists_it_and_moved_files_change_the_listing(tmp_path):
    """sync-data marks a host folder unverified before rsync when its listing (paths, sizes, mtimes) differs from
    the laptop's: equal totals hid moved or rewritten files, and an upload of them cut between two files went unseen."""
    from deploy.host.sync import local_listing

    src, dst = tmp_path / "laptop" / "crema-d", tmp_path / "host" / "crema-d"
    (src / "sub").mkdir(parents=True)
    (src / "a.npz").write_bytes(b"aaaa")
    (src / "sub" / "b.npz").write_bytes(b"bb")
    (src / "c.npz").symlink_to(src / "a.npz")  # rsync --copy-links makes a file of it
    os.utime(src / "a.npz", (1_600_000_000, 1_600_000_000))
    dst.parent.mkdir()
    subprocess.run(["rsync", "-a", "--copy-links", f"{src}/", f"{dst}/"], check=True, timeout=60)
    (dst / ".facenet-upload-incomplete").write_text("{}")  # the host's own: not listed

    def survey():
        return json.loads(subprocess.run([sys.executable, str(HELPER), json.dumps({"data": [str(dst)]})], capture_output=True,
                                         text=True, check=True, timeout=60, stdin=subprocess.DEVNULL).stdout)

    found = survey()
    assert found["data"] == [[3, 10]] and found["listing"] == [local_listing(src)[2]] and local_listing(src)[:2] == (3, 10)
    os.utime(src / "a.npz", ns=(1_600_000_000_999_999_999,) * 2)  # a host that keeps whole seconds (old rsync, its disk):
    os.utime(dst / "a.npz", ns=(1_600_000_000_000_000_000,) * 2)  # the same second (a float's int() gave the next one)
    found = survey()
    assert found["listing"] == [local_listing(src)[2]]
    files, size, listed = local_listing(src)
    (src / "sub" / "b.npz").rename(src / "b.npz")  # moved: the same files and bytes
    assert local_listing(src)[:2] == (files, size) and local_listing(src)[2] != listed
    subprocess.run(["rsync", "-a", "--copy-links", "--delete", f"{src}/", f"{dst}/"], check=True, timeout=60)
    assert survey()["listing"] == [local_listing(src)[2]]


def test_rsyncs_partial_folder_and_the_upload_marker_have_one_name_in_the_uploader_the_survey_and_the_trainer():
    """An interrupted `fab sync-data` leaves its files in rsync's --partial-dir (deploy/host/sync.py); the
    survey leaves that folder out of the data's size and the trainer's validation refuses data that still
    holds one: three copies of one name (the host side cannot import the laptop's), kept equal here."""
    import importlib.util

    from deploy.host import sync
    from trainer.data import validation

    spec = importlib.util.spec_from_file_location("fab_session_names", HELPER)
    helper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helper)
    assert sync.PARTIAL_DIR == helper.PARTIAL_DIR == validation.UNFINISHED_UPLOAD
    assert sync.UPLOAD_MARKER == helper.UPLOAD_MARKER == validation.UPLOAD_MARKER  # an upload not verified yet
