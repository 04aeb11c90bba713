"""The host agent and the run's uploader (trainer/storage/uploader.py, RUN/storage.json): a dead one started again,
and, after a spot notice, the wait for it to store the run's end. Called by host_agent.py; standard library only.

    state["uploader"] = revive_uploader(runs_dir)           # what was done, or None when nothing was to do
    stored = store_before_the_end(runs_dir, run_dir, notice)  # {epoch, state, final, at} the uploader stored, or None

A launch's uploader that died before it was done (a kill, the OOM killer) is started again at most
MAX_UPLOADER_RESTARTS times, and agent.log says so; the monitor shows the count. A fenced launch
(RUN/fenced.json: the run moved on) is not revived.
"""

import calendar
import json
import os
import subprocess
import time

import host_files
import run_format
import storage_state
from host_files import current, iso, log
from run_records import fenced

MAX_UPLOADER_RESTARTS = 5  # a launch's uploader started again at most this often: one that dies every time is said, not looped


def store_before_the_end(runs_dir, run_dir, notice):
    """With run storage: wait, until 5 s before the notice's time (at least 10 s), for the run's uploader to store
    the stopped run's last epoch; returns what it stored ({epoch, state, final, at}) or None."""
    try:
        ends = calendar.timegm(time.strptime(notice.get("time", ""), "%Y-%m-%dT%H:%M:%SZ"))
    except (TypeError, ValueError):
        ends = time.time() + 30
    record = storage_state.wait_stored(run_dir, max(10.0, ends - 5 - time.time()))
    if record is None:
        return None
    stored = record.get("stored") or {}
    log(runs_dir, f"storage: {'stored the run end' if stored.get('final') else 'did NOT store the run end'}: "
                  f"epoch {stored.get('epoch')} ({stored.get('state')}) at {stored.get('at')}; uploader {record.get('state')}")
    return {k: stored.get(k) for k in ("epoch", "state", "final", "at")}



def revive_uploader(runs_dir):
    """Start the current launch's uploader again when it died before it was done; returns what was done (a dict for
    state.json) or None when nothing was to do."""
    found = current(runs_dir)
    if found is None:
        return None
    run, run_dir = found
    record = storage_state.read(run_dir)
    launch = host_files.read_launch(run_dir)
    launch_id = launch.get("launch_id")
    if (not record or record.get("done") or not launch_id or record.get("launch_id") != launch_id
            or storage_state.alive(record.get("pid")) or fenced(run_dir, launch_id)):
        return None
    if record.get("state") in ("waiting", "starting", "restarting") and time.time() - (record.get("updated_epoch_seconds") or 0) < 30:
        return None  # just started: a moment from writing its own record
    settings, python, cwd = record.get("settings"), record.get("python"), record.get("cwd")
    restarts = int(record.get("restarts") or 0)
    if not isinstance(settings, dict) or not python or not cwd:
        return None  # an uploader of an older version: it did not say how to start it again
    if restarts >= MAX_UPLOADER_RESTARTS:
        if record.get("state") != "abandoned":
            record.update(state="abandoned", done=True, abandoned=f"died {restarts + 1} times; not started again")
            run_format.write_atomic(os.path.join(run_dir, storage_state.RECORD), json.dumps(record))
            log(runs_dir, f"uploader of run {run} (launch {launch_id}) died again after {restarts} restarts: not started again; "
                          "storage keeps its last stored epoch (see the run's storage.log)")
        return {"run": run, "launch_id": launch_id, "abandoned_at": iso(time.time())}
    record.update(restarts=restarts + 1, state="restarting", pid=None, updated_epoch_seconds=time.time())  # read by the new uploader
    run_format.write_atomic(os.path.join(run_dir, storage_state.RECORD), json.dumps(record))
    env = {**os.environ, "FACENET_STORAGE": json.dumps(settings), "PYTHONUNBUFFERED": "1"}
    with open(os.path.join(run_dir, run_format.STORAGE_LOG), "a") as out:
        proc = subprocess.Popen([python, "-m", "trainer.storage.uploader", run_dir, launch_id], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    log(runs_dir, f"uploader of run {run} (launch {launch_id}) was not running (pid {record.get('pid')}, state {record.get('state')}): "
                  f"started again as pid {proc.pid} (restart {restarts + 1} of at most {MAX_UPLOADER_RESTARTS})")
    return {"run": run, "launch_id": launch_id, "pid": proc.pid, "restarts": restarts + 1, "at": iso(time.time())}
