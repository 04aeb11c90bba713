"""Is this launch still the run's owner? `fab watch` (or this host's uploader, on finding a later launch's pointer in
storage) writes RUN/fenced.json naming a launch that may no longer train the run; its trainer asks at every epoch end.

    check = fence_check(run_dir)     # None when this process was not started by launch_training.sh (no FACENET_LAUNCH_ID)
    reason = check()                 # None while the launch owns the run, else why it was fenced

The file's format belongs to remote_scripts/run_state.py (fence, fenced), read here through it.
"""

import os
import sys
from pathlib import Path


def fence_check(run_dir):
    launch_id = os.environ.get("FACENET_LAUNCH_ID")
    if not launch_id:
        return None
    scripts = str(Path(__file__).resolve().parents[2] / "remote_scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    import run_state

    def check():
        record = run_state.fenced(str(run_dir), launch_id)
        return None if record is None else f"launch {launch_id} was fenced at {record.get('at')}: {record.get('reason')}"

    return check
