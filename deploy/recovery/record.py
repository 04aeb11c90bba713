"""The watch's record of a run, in the state dir: `.facenet/watch/<run>.json`, and the run's recoveries.json.

    with Record.held("r1", host="gpu1") as record:   # one watch per run (a lock held for the watch's life)
        record.note(decision, look, now)          # the state, the unreachable clock, a transition when the state changes
        record.add_recovery({...})                # {n, host, from_host, at, from_epoch, reason, launched}
        record.add_kill(epoch, launch_id)         # a SIGKILLed trainer restarted in place (recovery.max_restarts_on_kill)

It holds what the watch decided and why (state, every transition with its time and reason), which
run of the name it follows (run_started_at: its status.json's started_at, once seen), how many
recoveries it made (recovery.max_restarts counts them across watches of the same run; a new watch
after the run ended starts again from 0, the old count kept under `earlier`), and
where the run is now. The notifications the watch sent are in `<run>.notifications.json` beside it
(remote_scripts/notify.py's record). `write_on_host` puts the recoveries into the run directory
on its host (RUN/recoveries.json), where `fab monitor` shows them and storage keeps them.
"""

import contextlib
import fcntl
import json
import os
import shlex
import time

from deploy.errors import LocalInputError
from deploy.host.quoting import rjoin, rq
from deploy.paths import state_dir
from trainer.run_format import run_format


def iso(t=None):
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t if t is not None else time.time()))


def folder():
    path = state_dir() / "watch"
    path.mkdir(parents=True, exist_ok=True)
    return path


class Record:
    def __init__(self, run, host):
        self.path = folder() / f"{run}.json"
        self.notifications = folder() / f"{run}.notifications.json"
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        self.data = {"run": run, "host": host, "state": "starting", "since": iso(), "restarts": 0, "seen": False,
                     "unreachable_since": None, "transitions": [], "recoveries": [], **data}
        if data.get("state") in ("finished", "failed", "stopped", "gave-up", "superseded"):  # a new watch of an ended run
            self.data.update(state="starting")
            for key in ("run_started_at", "kills", "placing_since", "placing_tries", "launch_id", "stored_epoch", "stored_progress_at"):
                self.data.pop(key, None)  # perhaps a new run of the same name: its own kills, moves and placement
            if self.data["restarts"] or self.data["recoveries"]:
                self.data.setdefault("earlier", []).append({"restarts": self.data["restarts"], "recoveries": self.data["recoveries"]})
                self.data.update(restarts=0, recoveries=[])
        self.data.update(host=host, unreachable_since=None)  # where this watch starts (-H, else the last deploy-full's host)

    @classmethod
    @contextlib.contextmanager
    def held(cls, run, host):
        """The record of `run`, locked for this watch: a second `fab watch` of the run refuses (two would both recover it)."""
        lock_path = folder() / f"{run}.lock"
        with open(lock_path, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                lock.seek(0)
                raise LocalInputError(f"Another `fab watch` follows run {run} ({lock.read().strip() or 'pid unknown'}); "
                                      f"one watch per run (two would both move it). Its record: {folder() / (run + '.json')}") from None
            lock.truncate(0)
            lock.write(f"pid {os.getpid()} since {iso()}")
            lock.flush()
            yield cls(run, host)

    def save(self):
        run_format.write_json(self.path, self.data)

    def note(self, decision, look, now):
        """Apply one round's decision: the unreachable clock, whether the run was seen, a transition on a change."""
        d = self.data
        if look["reachable"]:
            d.update(unreachable_since=None, stored_epoch=None, stored_progress_at=None)
            info = look.get("info") or {}
            if info.get("state") not in (None, "none"):
                d["seen"] = True
            launch_id = (info.get("launch") or {}).get("launch_id")
            if launch_id:
                d["launch_id"] = launch_id  # the launch followed: storage's epochs count as its proof of life
            if info.get("state") in ("starting", "running") and d.get("placing_since"):
                d.update(placing_since=None, placing_tries=0)  # back by itself: a later loss gets the whole give_up_minutes
            started = (info.get("status") or {}).get("started_at")
            if started and started != d.get("run_started_at"):  # which run of this name is followed (storage may hold another)
                d["run_started_at"] = started
                self.save()
        else:
            if d["unreachable_since"] is None:
                d["unreachable_since"] = now
            self.note_stored(look.get("stored"), now)
        changed = decision.state != d["state"]
        if changed:
            self.transition(decision.state, decision.reason)
        return changed

    def note_stored(self, pointer, now):
        """Storage's pointer seen while the host does not answer: a later epoch of the followed launch than the last one
        seen is proof that the run lives (machine.decide waits for it); the first pointer seen is the baseline."""
        d = self.data
        if not pointer or not isinstance(pointer.get("epoch"), int) or pointer.get("state") != "running":
            return
        if d.get("launch_id") and pointer.get("launch_id") != d["launch_id"]:
            return  # another launch's pointer (the run moved, or another run of the name): not this one's life
        if d.get("stored_epoch") is not None and pointer["epoch"] > d["stored_epoch"]:
            d["stored_progress_at"] = now
        d["stored_epoch"] = pointer["epoch"]

    def transition(self, state, reason):
        d = self.data
        d["transitions"].append({"at": iso(), "from": d["state"], "to": state, "host": d["host"], "reason": reason})
        d.update(state=state, since=iso())
        self.save()

    def add_recovery(self, entry):
        d = self.data
        d["recoveries"].append(entry)
        d.update(restarts=d["restarts"] + 1, host=entry["host"], seen=False, unreachable_since=None, stored_epoch=None,
                 stored_progress_at=None, placing_since=None, launch_id=None)
        self.save()

    def add_kill(self, epoch, launch_id):
        """A restart after the kill of launch `launch_id` (one entry a launch; a restart tried again counts its tries)."""
        kills = self.data.setdefault("kills", [])
        known = next((k for k in kills if launch_id and k.get("launch_id") == launch_id), None)
        if known is not None:
            known["tries"] = known.get("tries", 1) + 1
        else:
            kills.append({"epoch": epoch, "launch_id": launch_id, "at": iso(), "tries": 1})
        self.save()


def write_on_host(conn, inv, run, recoveries):
    """RUN/recoveries.json on the run's (new) host, written atomically; the run's storage copy gets it from there."""
    run_dir = rjoin(inv.remote["runs_dir"], run)
    text = json.dumps({"recoveries": recoveries}, indent=1)
    tmp, final = rq(rjoin(run_dir, run_format.temp_name(run_format.RECOVERIES))), rq(rjoin(run_dir, run_format.RECOVERIES))
    out = conn.run(f"printf %s {shlex.quote(text)} > {tmp} && mv -f {tmp} {final}", hide=True, warn=True, in_stream=False)
    return out.ok
