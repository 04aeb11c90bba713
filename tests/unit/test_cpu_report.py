"""The per-test CPU report (tests/support/cpu_report.py) counts a test's children, waited for or orphaned."""

import subprocess
import sys
import time

from tests.support.cpu_report import Meter

BUSY = "import sys, time\nt = time.process_time()\nwhile time.process_time() - t < 0.8: pass\n"
# an orphan: 0.8 CPU-s, then it says so and lives on until told to end (sampled whole, however loaded the machine)
BUSY_THEN_WAIT = BUSY + (
    "import os\nopen(sys.argv[2] + '.done', 'w').close()\n"
    "while not os.path.exists(sys.argv[2] + '.end'): time.sleep(0.05)\n"
)


def wait_for(path, timeout=120):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.05)


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
