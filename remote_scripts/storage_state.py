"""The run uploader's record on the host (RUN/storage.json, written by trainer/storage/uploader.py),
for the monitor (run_state.collect) and the host agent. Standard library only.

    view(run_dir)                 # the record, with its ages and whether the uploader lives; None without one
    wait_stored(run_dir, seconds) # after a spot notice's stop: until the uploader has stored the run's end
"""

import json
import os
import time

from run_format import STORAGE as RECORD

PROCESS = "trainer.storage.uploader"


def read(run_dir):
    try:
        with open(os.path.join(run_dir, RECORD)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def alive(pid):
    try:
        with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
            return PROCESS.encode() in f.read()
    except (OSError, TypeError, ValueError):
        return False


def view(run_dir):
    """storage.json with seconds_since_stored, seconds_since_update and alive (the uploader's process runs)."""
    record = read(run_dir)
    if record is None:
        return None
    now = time.time()
    stored = record.get("stored") if isinstance(record.get("stored"), dict) else {}
    at = stored.get("at_epoch_seconds")
    record["seconds_since_stored"] = round(now - at, 1) if isinstance(at, (int, float)) else None
    updated = record.get("updated_epoch_seconds")
    record["seconds_since_update"] = round(now - updated, 1) if isinstance(updated, (int, float)) else None
    record["alive"] = alive(record.get("pid"))
    return record


def wait_stored(run_dir, seconds, poll=0.2):
    """Wait up to `seconds` for the uploader to be done (it stored the run's end, gave up, or is gone); returns
    its record then (None when the run has no uploader)."""
    deadline = time.monotonic() + seconds
    while True:
        record = view(run_dir)
        if record is None or record.get("done") or not record["alive"] or time.monotonic() >= deadline:
            return record
        time.sleep(poll)
