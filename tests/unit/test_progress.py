"""One progress line for a long step (deploy/host/progress.py): what it shows, what it keeps, how it fails. Fast: no SSH."""

import subprocess
import sys
import time

from deploy.host.progress import Progress, phase_of
from tests.support.helpers import ROOT

PIP = ["Collecting tensorflow==2.20.0", "  Downloading tensorflow-2.20.0-cp311-cp311-manylinux.whl (620.5 MB)",
       "Requirement already satisfied: numpy in ./venv/lib/python3.11/site-packages (2.1.0)",
       "Installing collected packages: tensorflow", "Successfully installed tensorflow-2.20.0"]


def test_the_phase_is_what_pip_is_at_and_other_lines_leave_it():
    assert [phase_of(line) for line in PIP] == ["collecting tensorflow==2.20.0", "downloading tensorflow-2.20.0-cp311-cp311-manylinux.whl",
                                                None, "installing the collected packages", "installed"]


def test_one_line_every_so_often_the_whole_output_in_the_log(tmp_path):
    said = []
    log = tmp_path / "logs" / "pip-gpu1.log"
    with Progress("installing CPU requirements", log, lambda line, style=None: said.append(line), every=1.0, tty=False,
                  show_all=False) as progress:
        for line in PIP[:2]:
            progress.write(line + "\r\n")  # paramiko's output: pieces, any line ending
        time.sleep(2.5)
        progress.write(PIP[2][:20])
        progress.write(PIP[2][20:] + "\n" + "\n".join(PIP[3:]) + "\n")
    assert said[0] == f"installing CPU requirements (full output: {log})"
    ticks = said[1:]
    assert 1 <= len(ticks) <= 3 and all(t.startswith("installing CPU requirements ... ") for t in ticks), said
    assert ticks[-1].endswith(" s (downloading tensorflow-2.20.0-cp311-cp311-manylinux.whl)"), said
    assert progress.phase == "installed"
    assert log.read_text().replace("\r", "").splitlines() == PIP  # all of it, as it came
    assert progress.tail(2).splitlines() == PIP[-2:]


def test_the_makefiles_runner_is_quiet_on_success_and_names_the_log_on_failure(tmp_path):
    script = ROOT / "deploy" / "host" / "progress.py"
    ok = subprocess.run([sys.executable, str(script), str(tmp_path / "ok.log"), "installing", "--",
                         "sh", "-c", "for i in 1 2 3 4 5 6 7 8 9; do echo Collecting pkg$i; done"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.splitlines()[-1].startswith("installing: done in ") and len(ok.stdout.splitlines()) == 2, ok
    assert (tmp_path / "ok.log").read_text().count("Collecting") == 9
    bad = subprocess.run([sys.executable, str(script), str(tmp_path / "bad.log"), "installing", "--",
                          "sh", "-c", "echo Collecting nothing; echo 'ERROR: No matching distribution' >&2; exit 3"],
                         capture_output=True, text=True)
    assert bad.returncode == 3, bad
    assert "ERROR: No matching distribution" in bad.stderr, bad
    assert f"installing FAILED (exit 3) after 0 s: its full output is in {tmp_path / 'bad.log'}" in bad.stderr, bad
