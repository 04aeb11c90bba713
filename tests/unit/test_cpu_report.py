"""The per-test CPU report (tests/support/cpu_report.py) counts a test's children, waited for or orphaned."""

import subprocess
import sys

import pytest

from tests.support.cpu_report import Meter
from tests.support.helpers import wait_until

BUSY = "import sys, time\nt = time.process_time()\nwhile time.process_time() - t < 0.8: pass\n"
# an orphan: 0.8 CPU-s, then it says so and lives on until told to end (sampled whole, however loaded the machine)
BUSY_THEN_WAIT = BUSY + (
    "import os\nopen(sys.argv[2] + '.done', 'w').close()\n"
    "while not os.path.exists(sys.argv[2] + '.end'): time.sleep(0.05)\n"
)


def wait_for(path):
    wait_until(path.exists, 120, str(path))


def orphan(tmp_path, name, marker):
    """A process orphaned at once (its shell parent exits, init adopts it) whose command line names `marker`;
    returns once it has used its 0.8 CPU-s, and a function that ends it."""
    flag = tmp_path / name
    subprocess.run(["setsid", "sh", "-c", f'"{sys.executable}" -c "$0" "$1" "$2" &', BUSY_THEN_WAIT, marker, str(flag)], check=True)
    wait_for(flag.with_name(name + ".done"))
    return lambda: flag.with_name(name + ".end").touch()


def test_a_child_and_an_orphan_naming_the_temp_folder_are_counted_and_a_stranger_is_not(tmp_path):
    flags = tmp_path / "flags"  # not the meter's folder: the flags in the orphans' command lines do not make them ours
    meter = Meter(str(tmp_path / "ours"))
    ends = []
    try:
        start = meter.total
        subprocess.run([sys.executable, "-c", BUSY], check=True)
        meter.sample()
        child = meter.total - start
        assert 0.7 <= child <= 1.5, child

        flags.mkdir()
        ends.append(orphan(flags, "stranger", "/elsewhere"))
        meter.sample()
        stranger = meter.total - start - child
        assert stranger < 0.2, stranger

        ends.append(orphan(flags, "ours", str(tmp_path / "ours")))
        meter.sample()
        ours = meter.total - start - child - stranger
        assert 0.7 <= ours <= 1.5, ours
    finally:
        for end in ends:
            end()
        meter.stop()


HALVES = ("import os, sys, time\n"
          "def busy():\n    t = time.process_time()\n    while time.process_time() - t < 0.4: pass\n"
          "def wait(name):\n    while not os.path.exists(sys.argv[1] + name): time.sleep(0.02)\n"
          "busy()\nopen(sys.argv[1] + '.half', 'w').close()\nwait('.go2')\n"
          "busy()\nopen(sys.argv[1] + '.done', 'w').close()\nwait('.end')\n")
LAUNCHER = ("import os, subprocess, sys, time\n"
            "subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2]], start_new_session=True)\n"
            "while not os.path.exists(sys.argv[2] + '.go'): time.sleep(0.02)\n")


@pytest.mark.parametrize("names", ["ours", "elsewhere"])
def test_a_daemon_its_launcher_leaves_to_init_is_counted_once(tmp_path, names):
    """As remote_scripts/agent_setup.py starts the host agent: a child starts a daemon in its own session and exits
    once it is up. The daemon's 0.4 CPU-s while it was in the test's tree are counted once (they were counted again
    when it named the folder), and its 0.4 CPU-s after, whatever it names (they were lost when it named another)."""
    for folder in ("ours", "elsewhere"):
        (tmp_path / folder).mkdir()
    flag = tmp_path / names / "daemon"  # the daemon's command line names it
    meter = Meter(str(tmp_path / "ours"))
    try:
        start = meter.total
        launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, HALVES, str(flag)])
        wait_for(flag.with_name("daemon.half"))
        meter.sample()  # the daemon's first half, in the tree
        flag.with_name("daemon.go").touch()
        assert launcher.wait(timeout=120) == 0
        meter.sample()  # orphaned
        flag.with_name("daemon.go2").touch()
        wait_for(flag.with_name("daemon.done"))
        meter.sample()
        counted = meter.total - start
        assert 0.75 <= counted <= 1.1, counted  # 0.8 CPU-s and two Python start-ups
    finally:
        for name in ("daemon.go", "daemon.go2", "daemon.end"):
            flag.with_name(name).touch()
        meter.stop()


def test_a_folder_is_matched_whole_another_workers_folder_that_begins_with_its_name_is_not(tmp_path):
    """pytest-xdist's worker gw1 does not count what names gw10's folder (make test with 11 or more workers)."""
    (tmp_path / "popen-gw1").mkdir()
    meter = Meter(str(tmp_path / "popen-gw1"))
    ends = []
    try:
        start = meter.total
        ends.append(orphan(tmp_path, "gw10", str(tmp_path / "popen-gw10" / "runs" / "r1")))
        meter.sample()
        assert meter.total - start < 0.2, meter.total - start
        ends.append(orphan(tmp_path, "gw1", str(tmp_path / "popen-gw1") + "/runs/r1"))
        meter.sample()
        assert 0.7 <= meter.total - start <= 1.5, meter.total - start
    finally:
        for end in ends:
            end()
        meter.stop()
