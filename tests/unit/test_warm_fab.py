"""The tests' warm `fab` (tests/support/warm_server.py) answers as a new `fab` process does: the same stdout, stderr and exit
code, its own environment (the inventory) and folder, and a timeout that kills it."""

import os
import subprocess

import pytest

from tests.support.helpers import ROOT
from tests.support.warm_runner import FAB, run_fab


def real_fab(args, env, cwd=ROOT):
    return subprocess.run([str(FAB), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("args, inventory", [
    (["--list"], None),
    (["monitor"], "hosts: [not, a, mapping]\n"),    # exit 2, naming the setting
])
def test_the_warm_fab_answers_exactly_as_a_new_fab_process(tmp_path, args, inventory):
    env = {**os.environ, "COLUMNS": "77", "FACENET_STATE_DIR": str(tmp_path / "state")}
    if inventory is not None:
        (tmp_path / "inventory.yaml").write_text(inventory)
        env["FACENET_INVENTORY"] = str(tmp_path / "inventory.yaml")
    warm, new = run_fab(args, cwd=ROOT, env=env, timeout=120), real_fab(args, env)
    assert (warm.returncode, warm.stdout, warm.stderr) == (new.returncode, new.stdout, new.stderr)
    assert warm.returncode == (0 if args == ["--list"] else 2), warm.stdout + warm.stderr
    if inventory is not None:  # this request's environment, not the server's: the error names this inventory
        assert str(tmp_path / "inventory.yaml") in warm.stdout + warm.stderr


def test_a_warm_fab_past_its_timeout_is_killed(tmp_path):
    fake = tmp_path / "fabfile.py"
    fake.write_text("import time\nfrom fabric import task\n\n@task\ndef sleepy(c):\n    time.sleep(60)\n")
    with pytest.raises(subprocess.TimeoutExpired):
        run_fab(["sleepy"], cwd=tmp_path, env=dict(os.environ), timeout=2)
    again = run_fab(["--list"], cwd=tmp_path, env=dict(os.environ), timeout=60)  # the server goes on
    assert again.returncode == 0 and "sleepy" in again.stdout
