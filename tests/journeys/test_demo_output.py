"""`make demo`'s output before the demo starts stays short: at most 20 lines before deploy-full's first step, with
an up-to-date .venv and a fresh demo folder (the first `make demo` after `make test`, say).

Counted in two parts, each as it prints:
- make's own lines: `make demo` in a folder holding this Makefile and its setup files, whose `.venv` is up to date
  and whose `.venv/bin/python` only says that it was asked to run the demo (system-deps runs as it is);
- the demo's lines up to deploy-full's `[1/6] provision`: `python -m deploy.demo` with a fresh FACENET_DEMO_DIR
  against its real local sshd, ended once that line shows.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from deploy.demo.localhost import end_host_processes
from tests.support.helpers import ROOT

BUDGET = 20
FIRST_STEP = re.compile(r"\[1/\d+\] ")
MARKER = "@@ the demo starts:"


def makes_lines(tmp_path):
    """What `make demo` prints before its recipe's Python starts, with .venv up to date."""
    missing = [name for name in ("rsync", "tmux", "ps", "sudo", "strace") if not shutil.which(name)]
    if missing or not os.path.exists("/usr/sbin/sshd"):
        pytest.skip(f"make's system-deps would install {missing or 'openssh-server'} here")
    folder = tmp_path / "checkout"
    folder.mkdir()
    for name in ("Makefile", "setup.cfg", "pyproject.toml"):
        shutil.copy2(ROOT / name, folder / name)
    python = folder / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\necho "{MARKER} python $*"\n')
    python.chmod(0o755)
    stamp = folder / ".venv" / ".installed"
    stamp.touch()
    later = time.time() + 5
    os.utime(stamp, (later, later))  # newer than the setup files: the venv target has nothing to do
    # as typed at a prompt, not as a make run inside make (make test): no "Entering directory" lines
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    proc = subprocess.run(["make", "demo"], cwd=folder, env=env, capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and f"{MARKER} python -m deploy.demo\n" in out, out
    return out.split(MARKER, 1)[0].splitlines()


def demos_lines(tmp_path):
    """What `python -m deploy.demo` prints, in a fresh demo folder, before deploy-full's first step."""
    demo_dir = tmp_path / "demo"  # no space: LocalSSHHost writes its paths into sshd_config unquoted
    env = {**os.environ, "FACENET_DEMO_DIR": str(demo_dir), "COLUMNS": "120"}
    env.pop("FACENET_INVENTORY", None)
    env.pop("FACENET_STATE_DIR", None)
    # 60 clips, not the 600 of `make demo`: only the count in its "Wrote ..." line differs
    proc = subprocess.Popen([sys.executable, "-m", "deploy.demo", "--clips", "60"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    lines = []
    try:
        for line in proc.stdout:
            if FIRST_STEP.match(line):
                return lines
            lines.append(line.rstrip("\n"))
        pytest.fail("the demo ended before deploy-full's first step:\n" + "\n".join(lines))
    finally:
        # SIGKILL, then its leftovers ended by their paths: a Ctrl-C would run the demo's own cleanup, which ends the tmux
        # sessions of the demo's fixed names, which a demo running elsewhere on this machine may be using
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        proc.stdout.close()
        end_host_processes(demo_dir)


@pytest.mark.ssh
@pytest.mark.xdist_group("demo")  # with tests/journeys/test_demo.py: one demo at a time
def test_make_demo_prints_at_most_20_lines_before_its_first_deploy_step(tmp_path):
    make, demo = makes_lines(tmp_path), demos_lines(tmp_path)
    shown = "\n".join([*(f"make | {line}" for line in make), *(f"demo | {line}" for line in demo)])
    print(f"{len(make)} line(s) from make, {len(demo)} from the demo before its first step:\n{shown}")
    assert len(make) + len(demo) <= BUDGET, f"make demo prints {len(make) + len(demo)} lines before its first step:\n{shown}"
    assert demo and demo[-1].startswith("training config: "), shown  # the count ended where the deploy's summary ends
