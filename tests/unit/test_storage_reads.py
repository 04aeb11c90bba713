"""Reading run storage from the laptop when things are wrong: `fab runs`, `fab fetch-results --run/--from-storage`,
`fab watch` and --resume-from against moto's S3 on 127.0.0.1, with runs seeded straight into the bucket (no
training): a run that failed or was stopped on its own, a store that boto3 cannot open (a missing AWS profile, an
endpoint nobody answers), a malformed pointer among good ones, a checkpoint whose bytes do not match their md5."""

import json
import os

import pytest
import yaml

from deploy.demo.localhost import free_port
from tests.support.helpers import ROOT
from tests.support.storage_check import client, new_bucket, seed_run
from tests.support.warm_runner import run_fab


class Store:
    """A bucket in moto, an inventory whose storage is it (and whose hosts nobody answers), and `fab` against them."""

    def __init__(self, root, moto_url):
        self.root, self.moto = root, moto_url
        self.bucket = new_bucket(moto_url)
        self.s3 = client(moto_url)
        self.inventory = {
            "hosts": {"gone": {"address": "127.0.0.1", "port": free_port(), "user": "nobody"},
                      "other": {"address": "127.0.0.1", "port": free_port(), "user": "nobody"}},
            "storage": {"url": f"s3://{self.bucket}/team", "endpoint_url": moto_url},
            "recovery": {"hosts": ["other"], "unreachable_minutes": 0.01, "poll_seconds": 0.2, "max_restarts": 2, "give_up_minutes": 0.03},
        }
        self.write()
        self.env = {**os.environ, "FACENET_INVENTORY": str(root / "inventory.yaml"), "FACENET_STATE_DIR": str(root / "state"),
                    "COLUMNS": "200", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(root / "no aws config"),
                    "AWS_SHARED_CREDENTIALS_FILE": str(root / "no aws credentials"), "AWS_EC2_METADATA_DISABLED": "true"}
        for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
            self.env.pop(key, None)

    def write(self, **changes):
        self.inventory.update(changes)
        (self.root / "inventory.yaml").write_text(yaml.safe_dump(self.inventory))

    def seed(self, run, **changes):
        return seed_run(self.s3, self.bucket, "team/", run, **changes)

    def fab(self, *args, env=None, timeout=120):
        proc = run_fab(args, cwd=ROOT, env={**self.env, **(env or {})}, timeout=timeout)
        proc.out = proc.stdout + proc.stderr
        return proc


@pytest.fixture
def store(tmp_path, moto_server):
    root = tmp_path / "facenet deploy"
    root.mkdir()
    return Store(root, moto_server)


def one_line(out):
    return " ".join(out.replace("│", " ").split())


# --- a run that ended on its own is not restarted by the watch -----------------------

@pytest.mark.parametrize("state, exit_record, code, said", [
    ("failed", {"exit_code": 137, "reason": "killed by SIGKILL (out of memory?)"}, 137, "exit code 137: killed by SIGKILL"),
    ("stopped", {"exit_code": 3, "requested": {"by": "fab stop"}}, 3, "stopped on request (fab stop)"),
    ("finished", {"exit_code": 0}, 0, "finished"),
])
def test_watch_ends_a_run_that_storage_says_ended_on_its_own_with_its_code(store, state, exit_record, code, said):
    store.seed("r1", state=state, final=True, summary={"epoch": 2, "epochs": 5, "exit": exit_record})
    watched = store.fab("-H", "gone", "watch", "--run", "r1")
    assert watched.returncode == code, watched.out
    out = one_line(watched.out)
    assert "storage says run r1" in out and said in out and "recovered" not in out, out
    assert "recovering run" not in out and "other:" not in out and "Traceback" not in out, out


def test_watch_still_moves_a_run_stopped_without_a_request(store):
    """A stop nobody asked for (a shutdown's SIGTERM) is a loss: the watch tries to move it (here: nobody answers: 10)."""
    store.seed("r1", state="stopped", final=True, summary={"epoch": 2, "epochs": 5, "exit": {"exit_code": 3}})
    watched = store.fab("-H", "gone", "watch", "--run", "r1")
    assert watched.returncode == 10, watched.out
    assert "from epoch 2 in storage" in one_line(watched.out) and "other: does not answer" in one_line(watched.out), watched.out
    # the lost host is a candidate too (not listed in recovery.hosts), and placement is tried again until give_up_minutes
    assert "gone: does not answer" in one_line(watched.out) and "no host could take run r1: trying again in" in watched.out, watched.out
    assert "(recovery.give_up_minutes: 0.03)" in one_line(watched.out), watched.out


@pytest.mark.parametrize("state", ["finished", "running"])
def test_a_watch_takes_no_other_run_of_the_same_name_from_storage(store, state):
    """The watch saw run r1 begin at 09:00 (its record; here a watch restarted after the laptop slept); storage holds
    an r1 begun at 03:50 (the uploader of the followed run refuses to write over it). That pointer is neither the
    run's end (it ended 0, "finished", before) nor a checkpoint to resume it from (it was resumed from it)."""
    store.seed("r1", state=state, final=state == "finished", summary={"epoch": 2, "epochs": 5, "exit": {"exit_code": 0}})
    folder = store.root / "state" / "watch"
    folder.mkdir(parents=True)
    ours = "2026-11-30T09:00:00+00:00"
    (folder / "r1.json").write_text(json.dumps({"run": "r1", "host": "gone", "state": "following", "seen": True,
                                                "run_started_at": ours}))
    watched = store.fab("-H", "gone", "watch", "--run", "r1")
    out = one_line(watched.out)
    assert watched.returncode == 10, watched.out
    assert f"storage holds another run named r1 (begun 2026-11-30T03:50:00+00:00, launch L1 on gpu1), not the one followed (begun {ours})" in out, out
    assert "storage says" not in out and "from epoch 2 in storage" not in out and "deploy-full" not in out, out
    assert "other: does not answer" in out and "Traceback" not in out, out
    assert json.loads((folder / "r1.json").read_text())["run_started_at"] == ours


def test_resume_from_a_failed_run_is_possible_on_purpose_and_says_what_it_continues(store, monkeypatch, tmp_path):
    from deploy.inventory import load_inventory
    from deploy.runs import storage

    for key, value in store.env.items():
        if key.startswith(("AWS_", "FACENET_")):
            monkeypatch.setenv(key, value)
    store.seed("r1", state="failed", final=True, summary={"epoch": 2, "epochs": 5, "exit": {"exit_code": 137, "reason": "OOM"}})
    said = []
    local = storage.resume_source(load_inventory(), "r1", dest=tmp_path / "resume", say=said.append)
    assert (local / "backup" / "latest.weights.h5").read_bytes() == b"weights 2"
    assert any("failed on its own (exit code 137: OOM)" in s and "continuing it as asked" in s for s in said), said


# --- boto3 cannot open or reach the store --------------------------------------------

def test_a_missing_aws_profile_is_a_clear_error_naming_it_everywhere(store):
    store.seed("r1")
    bad = {"AWS_PROFILE": "nosuch"}
    for args in (("runs",), ("fetch-results", "--from-storage", "--run", "r1", "--dest", store.root / "results"),
                 ("-H", "gone", "watch", "--run", "r1"), ("-H", "gone", "deploy-full", "--resume-from", "r1")):
        proc = store.fab(*args, env=bad)
        assert proc.returncode == 2, (args, proc.out)
        assert "AWS_PROFILE" in proc.out and "nosuch" in proc.out and "Traceback" not in proc.out, (args, proc.out)


def test_an_endpoint_nobody_answers_names_storage_endpoint_url_and_the_watch_gives_up_without_a_traceback(store):
    store.write(storage={**store.inventory["storage"], "endpoint_url": f"http://127.0.0.1:{free_port()}"})
    listed = store.fab("runs")
    assert listed.returncode == 1 and "storage.endpoint_url" in listed.out and "Traceback" not in listed.out, listed.out
    watched = store.fab("-H", "gone", "watch", "--run", "r1")
    assert watched.returncode == 10, watched.out
    assert "storage.endpoint_url" in watched.out and "Traceback" not in watched.out, watched.out


# --- a malformed pointer is one unreadable run, never a broken listing ------------------

@pytest.mark.parametrize("changes", [
    {"summary": "oops"},
    {"summary": {"metrics": {"uar": 0.5, "ci95": {"uar": "ab"}, "split": "test"}}},
    {"summary": {"best": {"metric": "val_uar", "value": 0.5, "epoch": 2}, "cost_usd": "free", "epochs": {"x": 1},
                 "note": "odd-types"}},
    {"epoch": None, "written_at": None},
    {"epoch": "abc"},
    {"state": 3},
], ids=["summary-text", "ci-text", "odd-types", "no-epoch", "epoch-text", "state-number"])
def test_a_malformed_pointer_leaves_the_other_runs_listed(store, changes):
    store.seed("good")
    store.seed("bad", **changes)
    listed = store.fab("runs")
    assert listed.returncode == 0, listed.out
    out = one_line(listed.out)
    assert "good gpu1 running 2/5" in out and "Traceback" not in out, listed.out
    if isinstance(changes.get("summary"), dict) and changes["summary"].get("note") == "odd-types":  # odd cells left out
        assert "bad gpu1 running 2/? val_uar 0.500 (epoch 2)" in out, listed.out
    else:
        assert "bad unreadable" in out, listed.out
    fetched = store.fab("fetch-results", "--from-storage", "--run", "bad", "--dest", store.root / "results")
    if isinstance(changes.get("summary"), dict):  # the pointer and its files are sound; only the table's cells were odd
        assert fetched.returncode == 0, fetched.out
    else:
        assert fetched.returncode == 1 and "LATEST" in fetched.out and "Traceback" not in fetched.out, fetched.out


@pytest.mark.parametrize("rel", ["", ".", "/etc/x", "a/../../x", "./status.json", "a//b", "backup"])
def test_a_file_entry_that_is_no_plain_path_inside_the_run_is_refused(store, rel):
    pointer = store.seed("r1")
    files = {**pointer["files"], rel: dict(pointer["files"]["history.csv"])}
    store.seed("r1", files=files)
    fetched = store.fab("fetch-results", "--from-storage", "--run", "r1", "--dest", store.root / "results")
    assert fetched.returncode == 1 and "file entry" in fetched.out and "Traceback" not in fetched.out, fetched.out
    assert not (store.root / "results" / "gpu1" / "r1" / "status.json").exists()  # nothing written from such a pointer


# --- smaller ------------------------------------------------------------------------------------

def test_a_download_whose_checksum_fails_keeps_the_local_copy(store):
    pointer = store.seed("r1")
    local = store.root / "results" / "gpu1" / "r1" / "history.csv"
    local.parent.mkdir(parents=True)
    local.write_text("my copy\n")
    files = {**pointer["files"], "history.csv": {**pointer["files"]["history.csv"], "md5": "f" * 32}}
    store.seed("r1", files=files)
    fetched = store.fab("fetch-results", "--from-storage", "--run", "r1", "--dest", store.root / "results")
    assert fetched.returncode == 1 and "ChecksumMismatch" in fetched.out, fetched.out
    assert "credentials" not in fetched.out, fetched.out
    assert local.read_text() == "my copy\n"
    assert sorted(p.name for p in local.parent.iterdir() if p.name.startswith(".")) == []  # no temp file left


def test_a_run_missing_from_a_pointer_objects_does_not_blame_the_credentials(store):
    pointer = store.seed("r1")
    store.s3.delete_object(Bucket=store.bucket, Key="team/r1/" + pointer["files"]["history.csv"]["key"])
    fetched = store.fab("fetch-results", "--from-storage", "--run", "r1", "--dest", store.root / "results")
    assert fetched.returncode == 1 and "NoSuchKey" in fetched.out and "credentials" not in fetched.out, fetched.out


def test_bad_options_are_refused_naming_the_option(store):
    listed = store.fab("runs", "--state", "bogus")
    assert listed.returncode == 2 and "--state" in listed.out and "finished" in listed.out and "preempted" in listed.out, listed.out
    for args in (("fetch-results", "--from-storage", "--run", "../x"), ("-H", "gone", "watch", "--run", "../x")):
        proc = store.fab(*args)
        assert proc.returncode == 2 and "--run " in proc.out and "--run-name" not in proc.out, (args, proc.out)
