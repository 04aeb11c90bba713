"""The run's uploader: every epoch, a consistent checkpoint of the run in object storage.

    FACENET_STORAGE='{"url": "s3://bucket/prefix", "endpoint_url": null, "region": null, "host": "gpu1"}' \\
        python -m trainer.storage.uploader RUN_DIR LAUNCH_ID

remote_scripts/launch_training.sh starts it beside the trainer, in a session of its own, when the
deploy sends storage settings: a stop or a kill of the run's process group leaves it running,
and it is no process of the run. It only reads the run directory (and writes RUN/storage.json),
runs at a lower priority, and never signals the trainer. Its loop, every POLL_SECONDS:

    status.json names an epoch (or a state) not stored yet:
        take a consistent snapshot (snapshot.py), upload the files that changed since the last
        checkpoint, then write the pointer LATEST (layout.py), then delete what no pointer names
    an upload failed: try again after 1, 2, 4 ... 30 s; storage.json counts the failures and keeps the error code
    the launch has ended (its exit record exists, or none of its processes lives):
        store every file as it is, with the run's final state, then exit (0; 1 after
        final_retry_seconds of failures; 3 when another launch took the run over)

RUN/storage.json (the monitor's "stored: epoch 14, 40 s ago" / "storage: 3 uploads failing: ..."):

    {"pid", "launch_id", "url", "state": "starting|waiting|stored|failing|final|gave-up|superseded",
     "stored": {"epoch", "state", "final", "at", "at_epoch_seconds", "checkpoint", "files", "bytes", "seconds"} | null,
     "failures": {"count", "code", "message", "since", "last_at"} | null, "uploads", "bytes", "done", "updated_at",
     "cpu_seconds": the uploader's own CPU time so far}

Before it writes a pointer it reads the stored one: when a later launch wrote it (the run was
resumed elsewhere while this host lived on), this uploader stops (state superseded) and fences its launch
(RUN/fenced.json, remote_scripts/run_state.py): the trainer stops at its next epoch end without a result, the host
agent sends nothing of it. A launch fenced by `fab watch` has its uploader stand down the same way. A stored run of
the same name that began at another time (a different run) is never written over.

storage.json also keeps what the host agent needs to start the uploader again if it dies before it is done
(settings, python, cwd; `restarts` counts the times it did).
"""

import fcntl
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from trainer.run_format import run_format
from trainer.storage import snapshot
from trainer.storage.layout import checkpoint_folder, launch_order, new_pointer, parse_url, summary
from trainer.storage.s3 import StorageError, Store, as_storage_error
from trainer.training.status import now_iso, write_json_atomic

POLL_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30
FINAL_RETRY_SECONDS = 300
VANISHED_AFTER_SECONDS = 5  # no live process of the launch and no exit record for this long: it vanished
EXIT_SUPERSEDED = 3  # the uploader's own exit code when another launch owns the run's storage (not run_format.SUPERSEDED)


def host_records():
    """remote_scripts/run_state.py (the one owner of the run-file format): the launch, its exit record, liveness."""
    scripts = str(Path(__file__).resolve().parents[2] / "remote_scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    import run_state

    return run_state


class Superseded(Exception):
    """Another launch wrote the run's pointer: the run continues elsewhere."""


class Uploader:
    def __init__(self, run_dir, launch_id, settings, log=print):
        self.run_dir, self.launch_id, self.settings, self.log = Path(run_dir), launch_id, settings, log
        self.name = self.run_dir.name
        self.where = parse_url(settings["url"])
        self.poll = float(settings.get("poll_seconds") or POLL_SECONDS)
        self.final_retry = float(settings.get("final_retry_seconds") or FINAL_RETRY_SECONDS)
        self.store = None
        self.pointer = self.previous = None  # the last pointer stored (or found), and the one before it
        self.seen = {}  # rel -> (file signature, md5): a file that did not change is not read again
        self.failures = 0
        self.retry_at = 0.0
        self.status_mtime = None
        self.terminated = False
        self.records = host_records()
        old = self.read_json(run_format.STORAGE) or {}
        same = old.get("launch_id") == launch_id  # started again by the host agent: what its predecessor stored stays said
        restarts = old.get("restarts", 0) if same else 0
        self.state = {"pid": os.getpid(), "launch_id": launch_id, "url": self.where.run_url(self.name), "state": "starting",
                      "stored": old.get("stored") if same else None, "failures": None, "uploads": 0, "bytes": 0, "done": False,
                      "started_at": now_iso(),
                      "settings": settings, "python": sys.executable, "cwd": os.getcwd(), "restarts": restarts}

    # --- the record the monitor reads ------------------------------------------------------

    def save(self, **changes):
        times = os.times()
        self.state.update(changes, updated_at=now_iso(), updated_epoch_seconds=time.time(), cpu_seconds=round(times.user + times.system, 3))
        try:
            write_json_atomic(self.run_dir / run_format.STORAGE, self.state)
        except OSError:
            pass  # a full disk: the uploads go on; the monitor shows the last record

    def failed(self, error):
        code, message = (error.code, error.message) if isinstance(error, StorageError) else (type(error).__name__, str(error)[:300])
        self.failures += 1
        self.retry_at = time.monotonic() + min(2 ** (self.failures - 1), BACKOFF_MAX_SECONDS)
        old = self.state.get("failures") or {}
        self.save(state="failing", failures={"count": self.failures, "code": code, "message": message,
                                             "since": old.get("since") or now_iso(), "last_at": now_iso()})
        self.log(f"[storage] {now_iso()} upload failed ({self.failures} in a row): {code}: {message}")

    # --- storage ----------------------------------------------------------------------------

    def connect(self, status):
        """The store, and the run's stored pointer; refuses a stored run of the same name that is another run."""
        if self.store is not None:
            return
        store = Store.open(self.settings)
        pointer = store.pointer(self.name)
        started = status.get("started_at")
        if pointer and started and pointer.get("run_started_at") and pointer["run_started_at"] != started:
            raise StorageError("RunNameTaken", f"{self.where.run_url(self.name)} holds another run of this name (begun at "
                                               f"{pointer['run_started_at']}, this one at {started}); it is not written over")
        self.store, self.pointer = store, pointer

    def read_json(self, rel):
        try:
            return json.loads((self.run_dir / rel).read_text())
        except (OSError, ValueError):
            return None

    def store_snapshot(self, snap, state, final):
        """Upload what changed, then the pointer, then delete what no pointer names."""
        t0 = time.monotonic()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{int(time.time() * 1000) % 1000:03d}Z"
        folder = checkpoint_folder(snap.epoch, stamp)
        before = (self.pointer or {}).get("files") or {}
        files, sent, sent_bytes = {}, 0, 0
        for rel, piece in snap.pieces.items():
            md5 = self.md5(rel, piece)
            if rel in before and before[rel].get("md5") == md5 and before[rel].get("size") == piece.size:
                files[rel] = before[rel]
                continue
            key = folder + rel
            self.store.put(self.name, key, piece.reader(), md5)
            files[rel] = {"key": key, "size": piece.size, "md5": md5}
            sent, sent_bytes = sent + 1, sent_bytes + piece.size
        record = self.exit_record()
        pointer = new_pointer(self.name, snap.epoch, folder, files, state, final, now_iso(), host=self.settings.get("host"),
                              launch_id=self.launch_id, run_started_at=snap.status.get("started_at"),
                              summary=summary(snap.status, snap.json(run_format.METRICS), record, snap.json(run_format.RECOVERIES)))
        self.check_not_superseded()
        self.store.put_pointer(self.name, pointer)  # last: the files it names are all there
        self.previous, self.pointer = self.pointer, pointer
        self.collect_garbage()
        seconds = round(time.monotonic() - t0, 3)
        self.failures = 0
        self.save(state="final" if final else "stored", failures=None, uploads=self.state["uploads"] + sent,
                  bytes=self.state["bytes"] + sent_bytes,
                  stored={"epoch": snap.epoch, "state": state, "final": final, "at": now_iso(), "at_epoch_seconds": time.time(),
                          "checkpoint": folder, "files": sent, "bytes": sent_bytes, "seconds": seconds})
        self.log(f"[storage] {now_iso()} stored epoch {snap.epoch} ({state}{', final' if final else ''}): {sent} file(s), "
                 f"{sent_bytes} bytes in {seconds} s")

    def md5(self, rel, piece):
        stat = piece.stat
        signature = (stat.st_dev, stat.st_ino, piece.size, stat.st_mtime_ns) if piece.data is None and stat else None
        known = self.seen.get(rel)
        if signature and known and known[0] == signature:
            return known[1]
        digest = hashlib.md5(usedforsecurity=False)
        reader = piece.reader()
        for chunk in iter(lambda: reader.read(1 << 20), b""):
            digest.update(chunk)
        self.seen[rel] = (signature, digest.hexdigest())
        return self.seen[rel][1]

    def check_not_superseded(self):
        """Superseded when a later launch (the run resumed elsewhere) wrote the stored pointer (launch_order: their UTC
        start, then their pid); an earlier launch's late write is written over."""
        stored = self.store.pointer(self.name)
        if stored is not None and launch_order(stored.get("launch_id")) > launch_order(self.launch_id):
            raise Superseded(f"{self.where.run_url(self.name)}/LATEST was written by launch {stored.get('launch_id')} on "
                             f"{stored.get('host')} at {stored.get('written_at')}: the run continues there")

    def collect_garbage(self):
        keep = {e["key"] for p in (self.pointer, self.previous) if p for e in p["files"].values()}
        try:
            stale = [k for k in self.store.keys(self.name) if k not in keep]
            if stale:
                self.store.delete(self.name, stale)
        except StorageError as e:  # the pointer is written: old objects left behind cost storage, nothing else
            self.log(f"[storage] {now_iso()} could not delete old checkpoint objects: {e}")

    # --- the launch -------------------------------------------------------------------------

    def exit_record(self):
        record = self.records.read_json(os.path.join(self.run_dir, run_format.EXITS, f"{self.launch_id}.json"))
        return record if isinstance(record, dict) else None

    def ended(self):
        """None while the launch runs; else the run's state to store (finished, stopped, failed, preempted, vanished)."""
        record = self.exit_record()
        if record is not None:
            return self.records.derive_state(record, False, self.read_json(run_format.STATUS))
        launch = self.records.read_launch(str(self.run_dir))
        if launch.get("launch_id") == self.launch_id and self.records.live_processes(launch):
            self.gone_since = None
            return None
        if not self.run_dir.is_dir():
            return "vanished"
        self.gone_since = getattr(self, "gone_since", None) or time.monotonic()
        return "vanished" if time.monotonic() - self.gone_since > VANISHED_AFTER_SECONDS else None

    def due(self):
        """status.json changed to an epoch or state that is not stored yet."""
        try:
            mtime = os.stat(self.run_dir / run_format.STATUS).st_mtime_ns
        except OSError:
            return False
        if self.pointer is None or mtime != self.status_mtime:
            status = self.read_json(run_format.STATUS) or {}
            self.status_mtime = mtime
            self.status_now = (status.get("epoch"), status.get("state"))
        stored = (self.pointer or {}).get("epoch"), (self.pointer or {}).get("state")
        return self.pointer is None or getattr(self, "status_now", None) != stored or not self.mine()

    def mine(self):
        return (self.pointer or {}).get("launch_id") == self.launch_id

    def attempt(self, final=False, state=None):
        """One try at storing the run now; True when stored (or nothing to store yet)."""
        try:
            snap = snapshot.take(self.run_dir, final=final)
            if snap is None:
                return final  # between two writes of an epoch's end (or no status.json): the next poll
            try:
                self.connect(snap.status)
                self.store_snapshot(snap, state or snap.status.get("state") or "starting", final)
            finally:
                snap.close()
            return True
        except Superseded:
            raise
        except Exception as e:  # noqa: BLE001 - any failure is retried, never the uploader's end
            self.failed(as_storage_error(e) if not isinstance(e, OSError) else e)
            return False

    # --- the loop ---------------------------------------------------------------------------

    def run(self):
        signal.signal(signal.SIGTERM, self.on_term)
        self.save(state="waiting")
        with open(self.run_dir / run_format.STORAGE_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # an earlier launch's uploader finishes its final upload first
            self.save(state="starting")
            try:
                return self.loop()
            except Superseded as e:
                self.save(state="superseded", superseded=str(e), done=True)
                if self.records.fenced(str(self.run_dir), self.launch_id) is None:  # its trainer stops at its next epoch end
                    self.records.fence(str(self.run_dir), self.launch_id, f"this host's uploader found that {e}")
                self.log(f"[storage] {now_iso()} {e}; stopping, and the launch is fenced")
                return EXIT_SUPERSEDED

    def on_term(self, signum, frame):
        self.terminated = True

    def loop(self):
        while True:
            fence = self.records.fenced(str(self.run_dir), self.launch_id)
            if fence is not None:
                raise Superseded(f"launch {self.launch_id} was fenced at {fence.get('at')}: {fence.get('reason')}")
            state = self.ended()
            if state is not None or self.terminated:
                return self.finish(state)
            if time.monotonic() >= self.retry_at and self.due():
                self.attempt()
            time.sleep(self.poll)

    def finish(self, state):
        """Store the run as its launch left it (final), retrying for final_retry_seconds (20 s when terminated)."""
        deadline = time.monotonic() + (20 if self.terminated and state is None else self.final_retry)
        while True:
            if not (self.run_dir / run_format.STATUS).exists():
                self.save(state="final", done=True, nothing="the trainer wrote no status.json: nothing to store")
                return 0
            if self.attempt(final=state is not None, state=state):
                self.save(done=True)
                return 0
            if time.monotonic() > deadline:
                self.save(state="gave-up", done=True)
                self.log(f"[storage] {now_iso()} gave up storing the run's last state after {self.failures} failures")
                return 1
            time.sleep(max(self.poll, self.retry_at - time.monotonic()))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or not os.environ.get("FACENET_STORAGE"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        os.setsid()  # a session of its own: a stop or kill of the run's process group leaves it to store the end
    except OSError:
        pass
    try:
        os.nice(10)  # the trainer first
    except OSError:
        pass
    settings = json.loads(os.environ["FACENET_STORAGE"])
    try:
        return Uploader(argv[0], argv[1], settings, log=lambda line: print(line, flush=True)).run()
    except Exception as e:  # a defect: said where the monitor looks, then the traceback in storage.log
        try:
            write_json_atomic(Path(argv[0]) / run_format.STORAGE, {"pid": os.getpid(), "state": "crashed", "done": True, "url": settings.get("url"),
                                                              "failures": {"count": 1, "code": type(e).__name__, "message": str(e)[:300]},
                                                              "updated_at": now_iso(), "updated_epoch_seconds": time.time()})
        finally:
            raise


if __name__ == "__main__":
    sys.exit(main())
