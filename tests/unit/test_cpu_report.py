"""The per-test CPU report (tests/support/cpu_report.py) counts a test's children, waited for or orphaned."""

import subprocess
import sys
import time

from tests.support.cpu_report import Meter

BUSY = "import sys, time\nt = time.process_time()\nwhile time.process_time() - t < 0.8: pass\n"


def test_a_child_and_an_orphan_naming_the_temp_folder_are_counted_and_a_stranger_is_not(tmp_path):
    meter = Meter(str(tmp_path))
    try:
        start = meter.total
        subprocess.run([sys.executable, "-c", BUSY], check=True)
        meter.sample()
        child = meter.total - start
        assert 0.7 <= child <= 1.5, child

        # orphaned at once (their shell parent exits, init adopts them): a stranger first, naming another folder...
        orphan = ["setsid", "sh", "-c", f'"{sys.executable}" -c "$0" "$1" &', BUSY]
        subprocess.run([*orphan, "/elsewhere"], check=True)
        time.sleep(2)
        meter.sample()
        stranger = meter.total - start - child
        assert stranger < 0.2, stranger
        # ...then one naming the folder: ours (its last sampling interval may be missed)
        subprocess.run([*orphan, str(tmp_path)], check=True)
        time.sleep(2)
        meter.sample()
        ours = meter.total - start - child - stranger
        assert 0.3 <= ours <= 1.0, ours
    finally:
        meter.stop()
