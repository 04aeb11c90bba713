"""`fab --list` and `fab monitor` start without the heavy libraries: a look at the host must not pay for
TensorFlow, numpy, matplotlib or boto3 (`python -X importtime` says what a `fab` process imported).
"""

import os
import subprocess
import sys

from tests.support.helpers import ROOT
from tests.support.startup_imports import heavy_in, imported
from tests.support.warm_runner import FAB


def test_fab_list_imports_no_heavy_library():
    proc = subprocess.run([sys.executable, "-X", "importtime", str(FAB), "--list"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and "monitor" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "fabric" in imported(proc.stderr)  # the check sees what it should
    assert heavy_in(proc.stderr) == []
