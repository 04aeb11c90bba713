"""The run and host format, one owner for the three sides (standard library only, imports nothing of the project).

    RUN_NAME.fullmatch(name)        # a run name: 1-100 letters, digits, '.', '_' or '-' (it becomes a directory)
    STATUS, LAUNCH, EXIT, ...       # the run's files (RUNS_DIR/RUN/...), the agent's (RUNS_DIR/.agent/...)
    LOCK_DIR, UPLOAD_MARKER, ...    # the host lock's files, the markers of a data upload
    STOPPED, SUPERSEDED             # the trainer's exit codes that are not a failure
    AGENT_DEFAULTS                  # the host agent's settings before `fab autostop` / `fab deploy-full` send any
    write_atomic(path, text)        # a hidden temp file beside `path` (temp_name), then a rename
    write_json(path, data)          # the same, for a JSON document

The host scripts import it from their own folder; the trainer and the laptop load it through
trainer/run_format.py. `sync-code` sends it to the host with the rest of remote_scripts/.
"""

import json
import os
import re

# --- names --------------------------------------------------------------------------------
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a directory under the runs dir, handed back by the host (.current)
LAUNCH_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")  # <UTC time>-<pid>: names the launch's exit record

# --- a run's files (RUNS_DIR/.current names the current run; the rest live in RUNS_DIR/RUN/) ----------------------
CURRENT = ".current"
STATUS = "status.json"  # the trainer's progress (trainer/training/status.py)
LAUNCH = "launch.json"  # the launch: launch id, process group, its leader's start time, boot id
EXIT = "exit.json"  # a link to the current launch's exit record
EXITS = "exits"  # exits/<launch id>.json: each launch's exit record, reserved as <launch id>.pending at launch
PENDING = ".exit.pending"  # the reserved record of a run launched before launch ids
PREEMPT = ".preempted.json"  # the spot notice, left by host_agent.py for the exit record
STOP_REQUEST = ".stop-request.json"  # a stop somebody asked for (`fab stop`, the budget cap), for the exit record
FENCE = "fenced.json"  # {launch_id, reason, at}: that launch may no longer train the run
STORAGE = "storage.json"  # the uploader's record of the run's checkpoints in object storage
METRICS, CV, RECOVERIES = "metrics.json", "cv.json", "recoveries.json"
TEST_PREDICTIONS = "test_predictions.json"  # each test clip's true and predicted class (trainer/results/predictions.py)
LOG = "train.log"
CONFIG = "config.yaml"  # the run's configuration: what makes a folder a run, on the host, the laptop and in the trainer
HISTORY = "history.csv"  # the epochs' metrics (Keras's CSVLogger)
SPLIT, MANIFEST, NORMALIZATION = "split.json", "manifest.json", "normalization.npz"  # the data a run was prepared with
CV_PLAN = "cv-plan.json"  # a cross-validation run's folds (trainer/training/cv.py)
BEST_MODEL = "best.keras"
STORAGE_LOG, STORAGE_LOCK = "storage.log", ".storage.lock"  # the uploader's output, and its lock (one uploader per run)

# --- the host agent's files (RUNS_DIR/.agent/) --------------------------------------------------------------
AGENT_DIR = ".agent"
AGENT_FILES = ("settings.json", "heartbeat", "state.json", "fired.json", "agent.log", "agent.lock", "budget.json")
AGENT_SCRIPT = "host_agent.py"  # what an agent process's command line holds

# --- the host lock (RUNS_DIR/.lock: deploy/host/lock.py takes it through fab_session.py, host_activity.py reads it) ---
LOCK_DIR, LOCK_HOLDER, LOCK_LEASE = ".lock", "holder.json", "lease"  # the lock folder, its holder's record, its lease
LEASE_SECONDS = 180  # three renewals missed at the slowest keeper (60 s): the holder is gone

# --- a data folder on the host while `fab sync-data` uploads into it (deploy/host/sync.py) ---------------------------
UPLOAD_PARTIAL_DIR = ".rsync-partial"  # rsync's --partial-dir: an interrupted upload's files, not part of the data
UPLOAD_MARKER = ".facenet-upload-incomplete"  # there from before an upload until it is verified

# --- run states and the trainer's exit codes --------------------------------------------------------------------
LIVE = ("starting", "running", "stalled")  # a process of the run lives and it has not ended
ENDED = ("finished", "failed", "stopped", "preempted", "vanished", "superseded")  # nothing of it runs
STOPPED = 3  # stopped on request (SIGTERM/SIGINT, `fab stop`): resumable
SUPERSEDED = 5  # fenced: the run continues under another launch

# --- the host agent's defaults ----------------------------------------------------------------------------------
SESSION = "facenet-training"  # the tmux session of the training
EC2_METADATA_URL = "http://169.254.169.254"  # IMDSv2
POLL_SECONDS, SPOT_GRACE_SECONDS = 5, 90
WAIT_FOR = ("ssh", "gpu")  # what keeps the host up besides a training and a fab task (autostop.wait_for)
STALL_FLOOR_SECONDS, STALL_EPOCHS = 15 * 60, 3  # stalled: no progress for max(15 min, 3 x the slowest epoch)
AGENT_DEFAULTS = {"session": SESSION, "autostop": None, "metadata_url": EC2_METADATA_URL, "metadata_explicit": None,
                  "metadata_recheck_seconds": 600, "poll_seconds": POLL_SECONDS, "spot_grace_seconds": SPOT_GRACE_SECONDS,
                  "price_per_hour": None, "budget": None, "stall_seconds": None, "notify_webhook": None, "notify_since": None,
                  "host_label": None, "shutdown_terminates": False}


def stall_threshold(slowest_epoch_seconds):
    """The default stall threshold in seconds, for a run whose slowest epoch so far took `slowest_epoch_seconds`."""
    return max(STALL_FLOOR_SECONDS, STALL_EPOCHS * (slowest_epoch_seconds or 0))


# --- writing ------------------------------------------------------------------------------------------------------

def temp_name(name, tag=None):
    """The temp file a write of file `name` goes through before its rename: hidden, ending in .tmp (fetches and
    snapshots leave such names out), with `tag` (default: this process's pid) so that two writers never share it."""
    return f".{name}.{os.getpid() if tag is None else tag}.tmp"


def write_atomic(path, text, mode=0o666):
    """A hidden temp file beside `path` (.NAME.PID.tmp, which fetches and snapshots leave out), then a rename: readers
    see the old file or the new one, and a link at `path` is replaced, never followed. A write that fails (a full disk)
    removes its temp file, so that it holds no space. `mode` (before the umask): 0o600 for a file only its user may
    read, from its first byte."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, temp_name(name))
    try:
        if os.path.lexists(tmp):
            os.remove(tmp)
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def write_json(path, data, mode=0o666, **dumps):
    """`data` as JSON (indent 1 unless `dumps` says otherwise), written with write_atomic."""
    write_atomic(path, json.dumps(data, **{"indent": 1, **dumps}), mode)
