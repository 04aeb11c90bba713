"""What `fab watch` needs of the run's copy in run storage (deploy/runs/storage.py, trainer/storage/).

    configured(inv)                          # storage.url is set
    epoch, url, why, end = latest(inv, "r1", started_at)  # the last stored epoch (LATEST), the run's address; or
                                             # (None, None, why, None); `end`: a machine.Decision when storage says the
                                             # run ended by itself. A pointer of another run of this name (its
                                             # run_started_at is not `started_at`, the followed run's) is neither.
    wait_uploader(look_again, seconds)       # the lost host still answers: until its uploader stored the run's end
    pointer(inv, "r1")                       # the run's pointer (epoch, state, launch_id), or None: proof of life
    resumed_epoch("r1")                      # the epoch `deploy-full --resume-from` just continued the run from

The run's recoveries.json is a file of the run like any other: its uploader stores it with the
next checkpoint, and `fab runs` shows it from the pointer's summary.
"""

import json
import time

from deploy.errors import DeployError
from deploy.paths import state_dir
from deploy.recovery.machine import stored_end
from deploy.runs import storage


def configured(inv):
    return storage.enabled(inv)


def latest(inv, run, started_at=None):
    """(last stored epoch, s3://.../RUN, None, None); (None, None, why, None) when storage has no checkpoint of the run
    or cannot be read, or holds another run of this name (begun at another time than `started_at`, the followed
    run's status.json started_at, when known); (None, None, why, Decision) when its pointer says that the run ended
    by itself (finished, failed on its own, stopped on request: machine.stored_end), which no recovery restarts."""
    if not storage.enabled(inv):
        return None, None, "no run storage (set storage.url in the inventory)", None
    try:
        store = storage.open_store(inv)
        pointer = storage.find_run(store, run)
    except DeployError as e:
        return None, None, str(e), None
    theirs = pointer.get("run_started_at")
    if started_at and theirs and theirs != started_at:  # its uploader refused to write over it: nothing of ours is there
        return None, None, (f"storage holds another run named {run} (begun {theirs}, launch {pointer.get('launch_id') or '?'} on "
                            f"{pointer.get('host') or '?'}), not the one followed (begun {started_at})"), None
    end = stored_end(pointer, run)
    if end is not None:
        return None, None, end.reason, end
    return pointer.get("epoch"), store.where.run_url(run), None, None


def pointer(inv, run):
    """The run's stored pointer (epoch, state, launch_id, written_at), or None (no storage, no such run, unreadable):
    read while the run's host does not answer, as proof that its run still goes on. Never raises."""
    if not storage.enabled(inv):
        return None
    try:
        found = storage.find_run(storage.open_store(inv), run)
    except Exception:  # noqa: BLE001 - storage unanswering is no proof either way
        return None
    return found if isinstance(found, dict) else None


def resumed_epoch(run):
    """The epoch of the backup that the last `deploy-full --resume-from` of `run` downloaded (the state dir's resume/
    HOST/RUN: what it uploaded to the new host), or None. Storage may have moved on between the watch's read and the
    deploy's: this is the epoch the run continues from."""
    found = sorted((state_dir() / "resume").glob(f"*/{run}/backup/training_metadata.json"), key=lambda p: p.stat().st_mtime)
    try:
        epoch = json.loads(found[-1].read_text()).get("epoch") if found else None
    except (OSError, ValueError, AttributeError):
        return None
    return epoch if isinstance(epoch, int) else None


def uploader_busy(info):
    """The run's uploader on its host is alive and has not stored the run's end yet."""
    record = (info or {}).get("storage") or {}
    return bool(record) and record.get("alive") and not record.get("done")


def wait_uploader(look_again, seconds, poll=1.0):
    """Call `look_again()` (-> run_state info, or None when the host stopped answering) until the run's uploader is
    done, gone, or `seconds` passed; returns the last info."""
    deadline = time.monotonic() + seconds
    info = look_again()
    while uploader_busy(info) and time.monotonic() < deadline:
        time.sleep(poll)
        info = look_again()
    return info
