"""`fab compare RUN_A RUN_B` as typed, on runs where a user has them: one fetched (DEST/<host>/<run>), one in run storage
(moto's S3, seeded straight into the bucket), with crafted test predictions (tests/support/predictions.py; no training,
no host). The comparison is the trainer's (tests/unit/test_compare.py holds its numbers); here: where the runs are
read from, what is printed and written, and the refusals and their exit codes. A run still on a host:
tests/host/test_sweep.py."""

import json
import os

import pytest
import yaml

from tests.support.helpers import ROOT
from tests.support.predictions import ACTORS, CLASSES, predict, shuffle_class, truth, write_run
from tests.support.storage_check import client, new_bucket, seed_run
from tests.support.warm_runner import run_fab


def laptop(root, moto_url=None):
    """An inventory without hosts (and with run storage on moto when given), and `fab` against it."""
    root.mkdir()
    inventory = {"hosts": {}}
    if moto_url:
        inventory["storage"] = {"url": f"s3://{new_bucket(moto_url)}/team", "endpoint_url": moto_url}
    (root / "inventory.yaml").write_text(yaml.safe_dump(inventory))
    env = {**os.environ, "FACENET_INVENTORY": str(root / "inventory.yaml"), "FACENET_STATE_DIR": str(root / "state"), "COLUMNS": "200",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    env.pop("AWS_ENDPOINT_URL", None), env.pop("AWS_PROFILE", None)

    def fab(*args):
        proc = run_fab(args, cwd=ROOT, env=env, timeout=120)
        proc.out = proc.stdout + proc.stderr
        return proc
    return inventory, fab


def predictions_bytes(folder):
    return (folder / "test_predictions.json").read_bytes()


def test_a_fetched_run_and_a_stored_one_are_compared_and_a_planted_difference_is_found(tmp_path, moto_server):
    inventory, fab = laptop(tmp_path / "laptop", moto_server)
    results = tmp_path / "my results"
    clips = truth()
    base = predict(clips, seed=1)
    write_run(results / "gpu1" / "base", clips, base)
    shuffled = write_run(tmp_path / "made" / "shuffled", clips, shuffle_class(clips, base, CLASSES.index("FEA"), seed=2))
    bucket = inventory["storage"]["url"].split("/")[2]
    seed_run(client(moto_server), bucket, "team/", "shuffled", extra={"test_predictions.json": predictions_bytes(shuffled)},
             state="finished", final=True, host="gpu2")

    out = fab("compare", "base", "shuffled", "--dest", str(results))
    assert out.returncode == 0, out.out
    assert "base: the copy fetched in" in out.out and "Fetched run shuffled from storage" in out.out, out.out
    assert "B is worse: UAR B − A" in out.out, out.out
    for score in ("UAR", "accuracy", "macro F1", "recall FEA"):
        assert score in out.out, score
    written = json.loads((results / "compare-base-vs-shuffled.json").read_text())
    assert written["ci95"]["uar"][1] < 0 and written["actors"] == len(ACTORS)
    assert (results / "compare-base-vs-shuffled.png").read_bytes()[:4] == b"\x89PNG"
    assert (results / "gpu2" / "shuffled" / "test_predictions.json").is_file()  # read from storage into DEST/<host>/<run>

    same = fab("compare", "base", str(results / "gpu1" / "base"), "--dest", str(results), "--out", str(tmp_path / "out"))
    assert same.returncode == 0 and "no difference shown" in same.out, same.out


def test_runs_that_cannot_be_paired_are_refused_naming_the_run_and_the_difference(tmp_path):
    _, fab = laptop(tmp_path / "laptop")
    results = tmp_path / "results"
    clips = truth()
    write_run(results / "gpu1" / "base", clips, predict(clips, seed=1))
    others = truth(actors=ACTORS[:18] + ["2001", "2002"])
    write_run(results / "gpu1" / "other-split", others, predict(others, seed=1))
    (results / "gpu1" / "unfinished").mkdir()
    (results / "gpu1" / "unfinished" / "status.json").write_text("{}")

    different = fab("compare", "base", "other-split", "--dest", str(results))
    assert different.returncode == 2, different.out
    assert "were tested on different clips" in different.out and "actors only in" in different.out, different.out
    assert "other-split" in different.out and "2001" in different.out, different.out

    missing = fab("compare", "base", "unfinished", "--dest", str(results))
    assert missing.returncode == 2, missing.out
    assert "Run unfinished was not found with test predictions" in missing.out and "no fetched copy" in missing.out, missing.out

    bad = fab("compare", "base", "../etc", "--dest", str(results))
    assert bad.returncode == 2 and "RUN expects a name" in bad.out, bad.out


def test_a_folder_that_is_not_a_run_is_read_as_a_run_name_and_a_host_that_is_down_is_named_and_passed(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from deploy.errors import HostUnreachable, LocalInputError
    from deploy.runs import compare

    _, fab = laptop(tmp_path / "laptop")
    results = tmp_path / "results"
    clips = truth()
    write_run(results / "gpu1" / "base", clips, predict(clips, seed=1))
    not_a_run = fab("compare", "configs", "base", "--dest", str(results))  # the repo's configs/ folder, where fab runs
    assert not_a_run.returncode == 2 and "Run configs was not found with test predictions" in not_a_run.out, not_a_run.out

    class Conn:
        def close(self):
            pass

    def fetch(target, inv, run, dest, say):
        if target.host_name == "down":
            raise HostUnreachable("Connection refused")
        return tmp_path / "from-up"

    monkeypatch.setattr(compare, "connect", lambda c, inv: (_ for _ in ()).throw(LocalInputError("no -H")))
    monkeypatch.setattr(compare, "connect_host", lambda config, inv, name: SimpleNamespace(host_name=name, label=name, conn=Conn()))
    monkeypatch.setattr(compare, "fetch_needed", fetch)
    inv = SimpleNamespace(hosts={"down": None, "up": None}, for_host=lambda name: None)
    looked, said = [], []
    assert compare.from_hosts(SimpleNamespace(config=None), inv, "r", tmp_path, lambda *a: said.append(a[0]), looked) == tmp_path / "from-up"
    assert looked == ["down could not be reached: Connection refused"]
    assert said == ["down could not be reached: Connection refused; asking the next place"], said  # said, though found on up
    monkeypatch.setattr(compare, "fetch_needed", lambda target, *a: fetch(SimpleNamespace(host_name="down"), *a))
    monkeypatch.setattr(compare.storage, "enabled", lambda inv: False)
    with pytest.raises(HostUnreachable, match="down could not be reached.*up could not be reached"):
        compare.find_run(SimpleNamespace(config=None), inv, "r", tmp_path, print)
