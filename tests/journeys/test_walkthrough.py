"""The README's walkthrough, tried as a person would: its commands, read from README.md itself, typed in
order in a fresh copy of the repo against the suite's sshd on 127.0.0.1; the asserts are on what the
person sees. Then the README's "Change a hyperparameter and train again": its config edit and its
`fab train` line, and the host's copy of the run's config holds the edited values.

Only what must differ on this machine is changed, each where it is done below, saying why: `make venv`
is skipped (the suite's venv is the copy's .venv, so `. .venv/bin/activate` runs as written), PYTHONPATH
names the copy, the `-H user@address -i key` of deploy-full names the local sshd, and the host's folders
and the like are appended to the inventory the walkthrough writes (host_settings). The README's numbers
are kept. The changed run's 100 epochs are not waited for: once its first epoch shows the edited learning rate, the
README's `fab stop` ends it.

A README whose walkthrough this test does not recognise fails it, naming README.md: change both together.
"""

import csv
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support.helpers import ROOT, read_status, wait_until
from tests.support.readme_walkthrough import hyperparameter_change, walkthrough

# --- typing the commands -------------------------------------------------------------------------

class Terminal:
    """A person's shell in `cwd`: each command runs with bash, the environment of the one before carried forward
    (an `export` stays), and what it prints (stdout and stderr as on a terminal) is returned with its exit code."""

    def __init__(self, cwd, env, saved):
        self.cwd, self.env, self.saved, self.timings = Path(cwd), env, saved, []

    def type(self, command, timeout=600):
        saved = self.saved
        script = f"{command}\nstatus=$?\nenv -0 > {shlex.quote(str(saved))}\nexit $status\n"
        t0 = time.monotonic()
        proc = subprocess.run(["bash", "-c", script], cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, timeout=timeout)
        self.timings.append((command, time.monotonic() - t0))
        self.env = dict(item.split("=", 1) for item in saved.read_text().split("\0") if "=" in item)
        self.cwd = Path(self.env.get("PWD", self.cwd))
        print(f"$ {command}  [{proc.returncode}, {time.monotonic() - t0:.1f} s]\n{proc.stdout}")
        return proc


def scratch_copy(dest):
    """The repo's tracked files as they are in this checkout, copied to `dest`: the walkthrough writes data,
    configs, an inventory and results into the repo it runs in, which must not be this one."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in this checkout is not copied
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(source.read_bytes())
            (dest / name).chmod(source.stat().st_mode)
    return dest


# --- the test ------------------------------------------------------------------------------------

@pytest.mark.ssh
@pytest.mark.tf
@pytest.mark.slow
def test_the_readme_walkthrough_as_typed_then_a_changed_hyperparameter(tmp_path, ssh_host, host_venv):
    from deploy.demo.localhost import end_host_processes

    steps = walkthrough()
    edit, train_line, new_run = hyperparameter_change()
    repo = scratch_copy(tmp_path / "facenet-deploy")
    host_root = tmp_path / "host root"
    settings = host_settings(tmp_path, host_root, host_venv)
    # `. .venv/bin/activate` is typed as written: the copy's .venv is this suite's venv
    (repo / ".venv").symlink_to(Path(sys.prefix))
    env = {k: v for k, v in os.environ.items() if k not in ("FACENET_INVENTORY", "FACENET_STATE_DIR", "VIRTUAL_ENV")}
    # The venv's editable install names the checkout it was made in, a person's the clone they type in: the copy's
    # own code must run (`python -m trainer` in the copy imports it anyway; `fab` would import the other checkout's).
    env["PYTHONPATH"] = str(repo)
    env["COLUMNS"] = "120"  # a terminal's width, not the 80 that rich assumes for a pipe
    shell = Terminal(repo, env, tmp_path / "environment")
    try:
        facts = walk(shell, steps, settings, ssh_host, host_root)
        change_a_hyperparameter(shell, facts, edit, train_line, new_run, host_root)
    finally:
        print("\n".join(f"{seconds:7.1f} s  {command}" for command, seconds in shell.timings))
        end_host_processes(tmp_path, (settings["tmux_session"], settings["tensorboard"]["session"]))


def host_settings(tmp_path, host_root, host_venv):
    """What this test appends to the inventory the walkthrough writes, which names only its data and config. The rest
    takes its default, which on a real GPU host is right and here is not (as in tests/support/deploy_env.py's DeployEnv)."""
    from deploy.demo.localhost import free_port

    tag = os.urandom(4).hex()
    return {
        # the defaults are under the login's ~/ (~/facenet-deploy, ~/venv, ...): this test's folders instead
        "remote": {"project_dir": str(host_root / "project"), "data_dir": str(host_root / "data"),
                   "runs_dir": str(host_root / "runs"),
                   # a venv that sees this venv's packages (conftest.host_venv): provision downloads no second TensorFlow
                   "venv": str(host_venv)},
        # a tmux session and TensorBoard ports of this test alone: other tests use this machine's tmux and ports at once
        "tmux_session": f"test-walkthrough-{tag}",
        "tensorboard": {"session": f"test-walkthrough-tb-{tag}", "remote_port": free_port(), "local_port": free_port()},
        # the "host" is this machine: apt-get has nothing to install that is missing here, and pip installs from
        # nothing but what the host venv already sees
        "apt_packages": ["tmux", "rsync"],
        "pip": {"extra_args": ["--no-index"]},
        # not an EC2 instance: the host agent never asks 169.254.169.254
        "ec2": {"metadata_url": None},
        # should the host agent's autostop fire, it must not power this machine off
        "autostop": {"command": f"touch {shlex.quote(str(tmp_path / 'powered off'))}"},
    }


def walk(shell, steps, settings, ssh_host, host_root):
    """The walkthrough's commands in order, each held to what its step promises; returns the fields read from them."""
    facts = {}
    for kind, line, fields in steps:
        facts.update(fields)
        if kind == "make venv":
            # the venv exists (this suite runs in it), and make's rule would reinstall it from the copy's setup files
            # (newer than its stamp), moving the suite's editable install to this test's temp folder
            continue
        if kind == "deploy-full":
            # the README's made-up address and key file: the suite's sshd on 127.0.0.1 and the key it accepts
            line = line.replace(fields["host"], f"-H {ssh_host.user}@127.0.0.1:{ssh_host.port} -i {shlex.quote(str(ssh_host.key_file))}")
        proc = shell.type(line)
        assert proc.returncode == 0, f"{line!r} exited {proc.returncode}:\n{proc.stdout}"
        out = proc.stdout
        if kind == "activate":
            venv = shell.env.get("VIRTUAL_ENV", "")  # the path the venv was made at, which activate names
            assert Path(venv).resolve() == Path(sys.prefix).resolve() and shell.env["PATH"].startswith(f"{venv}/bin:"), shell.env
        elif kind == "synth":
            assert f"Wrote {fields['clips']} synthetic crema-d clips to {fields['data']}" in out, out
        elif kind == "validate":  # every file usable
            assert f"Searched {fields['data']}: {facts['clips']} .npz files, {facts['clips']} accepted, 0 rejected" in out, out
        elif kind == "config":
            facts["epochs"] = yaml.safe_load((shell.cwd / fields["config"]).read_text())["train"]["epochs"]
        elif kind == "inventory":
            inventory = shell.cwd / fields["inventory"]
            written = yaml.safe_load(inventory.read_text())
            assert written == {"local_data": [facts["data"]], "train_config": facts["config"]}, written
            with open(inventory, "a") as f:  # the host's folders and the rest (host_settings)
                f.write(yaml.safe_dump(settings, sort_keys=False))
        elif kind == "export":
            assert shell.env["FACENET_INVENTORY"] == str(shell.cwd / facts["inventory"]), shell.env["FACENET_INVENTORY"]
        elif kind == "deploy-full":
            facts["host line"] = f"host: {ssh_host.user}@127.0.0.1:{ssh_host.port}, key {ssh_host.key_file}\n"
            assert out.startswith(facts["host line"]), out
            for i, step in enumerate(["provision", "sync-code", "sync-data", "preflight", "smoke-test", "train"], 1):
                assert f"[{i}/6] {step}\n" in out and f"✓ {step} " in out, (step, out)
            assert "Smoke test passed" in out and "estimate of the full training" in out, out
            assert (f"Training started: run {fields['run']} with config {facts['config']} (train.epochs {facts['epochs']}) "
                    "as on this machine") in out, out
            assert f"Run {fields['run']} is training on {ssh_host.user}@127.0.0.1:{ssh_host.port}. Next:" in out, out
        elif kind == "monitor":  # the host is remembered: no -H or -i from here on
            assert out.startswith(facts["host line"]), out
            assert re.search(r"facenet-deploy monitor: (starting|running|finished)", out), out
            assert re.search(rf"│ run +{re.escape(facts['run'])} ", out) and re.search(r"│ state +(STARTING|RUNNING|FINISHED)", out), out
        elif kind == "follow":
            facts["follow"] = line
            follows_to_the_end(out, facts["run"], facts["epochs"])
        elif kind == "fetch-results":
            fetched(out, shell.cwd / "results", facts["run"])
    return facts


def follows_to_the_end(out, run, epochs):
    """What `fab monitor --follow` shows of a run that trains to its last epoch: the log's epochs, then the run finished."""
    assert f"Epoch {epochs}/{epochs} " in out, out
    assert re.search(rf"│ run +{re.escape(run)} ", out) and re.search(r"│ state +FINISHED +exit code 0", out), out
    assert out.rstrip().endswith("Done. Bring the results home with `fab fetch-results`."), out[-2000:]


def fetched(out, results, run):
    """The test UAR with its 95% interval printed, and the run in results/<host>/<run>/ with the same score."""
    score = re.search(rf"^Run {re.escape(run)}, test \(\d+ clips, \d+ actors\): UAR (\d\.\d+) \[(\d\.\d+), (\d\.\d+)\]", out, re.M)
    assert score, out
    uar, low, high = map(float, score.groups())
    assert low <= uar <= high, score.group(0)
    assert "intervals in brackets: 95% bootstrap over actors" in out, out
    hosts = [p.name for p in results.iterdir()]
    assert len(hosts) == 1 and "127.0.0.1" in hosts[0], hosts
    local = results / hosts[0] / run
    assert f"Fetched run {run} (finished): " in out and f" in {local}\n" in out, out
    metrics = json.loads((local / "metrics.json").read_text())
    assert round(metrics["test"]["uar"], 3) == uar, (metrics["test"]["uar"], uar)
    assert (local / "best.keras").is_file() and (local / "config.yaml").is_file(), sorted(p.name for p in local.iterdir())


def change_a_hyperparameter(shell, facts, edit, train_line, run, host_root):
    """The README's edit of the config the walkthrough trains with, its `fab train --run-name NAME` as written (no
    sync-code before it: `fab train` sends the config as this machine has it), then stopped after its first epoch."""
    config_file = shell.cwd / facts["config"]
    config = yaml.safe_load(config_file.read_text())
    for part, values in edit.items():
        config.setdefault(part, {}).update(values)
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    # what makes the run's config below a proof: the host's own copy (from deploy-full's sync-code) is the unedited one
    assert yaml.safe_load((host_root / "project" / facts["config"]).read_text())["train"]["epochs"] == facts["epochs"]

    started = shell.type(train_line)
    epochs = config["train"]["epochs"]
    assert started.returncode == 0, started.stdout
    assert started.stdout.startswith(facts["host line"]), started.stdout
    assert f"Training started: run {run} with config {facts['config']} (train.epochs {epochs}) as on this machine" in started.stdout, started.stdout
    run_dir = host_root / "runs" / run
    resolved = yaml.safe_load(wait_until(lambda: (run_dir / "config.yaml").exists() and (run_dir / "config.yaml").read_text(), 60,
                                         "the run's resolved config on the host"))
    assert {part: {key: resolved[part][key] for key in values} for part, values in edit.items()} == edit, resolved

    # the training itself runs at the edited rate, not only its config file: its first epoch's row in history.csv
    history = run_dir / "history.csv"
    wait_until(lambda: len(history.read_text().splitlines()) > 1 if history.exists() else False, 600, "the changed run's first epoch")
    if "learning_rate" in edit.get("train", {}):
        with open(history) as f:
            first = next(csv.DictReader(f))
        assert float(first["learning_rate"]) == pytest.approx(edit["train"]["learning_rate"], rel=1e-6), first
    # its remaining epochs would show nothing the walkthrough's run did not (followed to its end above): the README's
    # `fab stop` ends it, and it is stopped as a resumable run
    stopped = shell.type("fab stop")
    assert stopped.returncode == 0, stopped.stdout
    assert read_status(run_dir).get("state") == "stopped", read_status(run_dir)
