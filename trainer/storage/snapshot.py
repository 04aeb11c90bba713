"""A consistent view of a run directory while its trainer writes it: the files of one epoch.

    snap = take(run_dir)                  # None: the trainer is between two writes of an epoch's end; try again
    snap = take(run_dir, final=True)      # the trainer has ended: every file as it is
    snap.epoch, snap.status, snap.pieces  # {path in the run: Piece}
    snap.close()

The trainer ends an epoch with best.keras (when it improves), history.csv's row, the backup
(callbacks.json, then the weights, then training_metadata.json: trainer/training/callbacks/backup.py RunBackup)
and status.json, each replaced by a rename or appended. Every file is opened first (status.json,
then training_metadata.json, then callbacks.json, then the rest: the backup's pointer before what it
points to), so that what is read is the version that was there (a rename leaves an open file as it
was); then the set is taken only if it is of one epoch:

    status.json's epoch E equals the backup's (training_metadata.json and callbacks.json);
    the backup's weights and best.keras were written before training_metadata.json (by their
    modification times: a later epoch's would be newer);
    history.csv holds a row for each epoch before E (rows after it, written since, are cut off).

A file that is only appended (train.log, the TensorBoard events) is read up to its size when
opened. Excluded: hidden files (temp files, locks, the pending exit record), *.tmp, *.pending,
storage.json and storage.log (the uploader's own), and backup/*.bkp unless `final`.
"""

import io
import json
import os

from trainer.run_format import run_format

EXCLUDED_NAMES = (run_format.STORAGE, run_format.STORAGE_LOG)
BACKUP_FILES = ("latest.weights.h5", "training_metadata.json", "callbacks.json")


def excluded(rel, final=False):
    parts = rel.split("/")
    if any(p.startswith(".") for p in parts) or rel.endswith((".tmp", ".pending")) or rel in EXCLUDED_NAMES:
        return True
    return not final and "backup" in parts[:-1] and rel.endswith(".bkp")


class Piece:
    """One file's content at the snapshot: bytes, or an open file read up to `size`."""

    def __init__(self, fd=None, size=0, data=None, stat=None):
        self.fd, self.data, self.stat = fd, data, stat
        self.size = len(data) if data is not None else size

    def reader(self):
        return io.BytesIO(self.data) if self.data is not None else _Bounded(self.fd, self.size)

    def read_all(self):
        return self.data if self.data is not None else os.pread(self.fd, self.size, 0) if self.size else b""

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _Bounded(io.RawIOBase):
    """A seekable reader of the first `size` bytes of an open file (pread: independent of other readers)."""

    def __init__(self, fd, size):
        super().__init__()
        self.fd, self.size, self.pos = fd, size, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self.pos

    def seek(self, offset, whence=io.SEEK_SET):
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset
        return self.pos

    def readinto(self, buffer):
        n = max(0, min(len(buffer), self.size - self.pos))
        data = os.pread(self.fd, n, self.pos) if n else b""
        buffer[:len(data)] = data
        self.pos += len(data)
        return len(data)


class Snapshot:
    def __init__(self, epoch, status, pieces):
        self.epoch, self.status, self.pieces = epoch, status, pieces

    def json(self, rel):
        piece = self.pieces.get(rel)
        try:
            return json.loads(piece.read_all()) if piece else None
        except ValueError:
            return None

    def close(self):
        for piece in self.pieces.values():
            piece.close()


def _open(path):
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    st = os.fstat(fd)
    return Piece(fd=fd, size=st.st_size, stat=st)


def list_files(run_dir, final=False):
    """Paths (relative, '/'-separated) of the run's regular files that are stored; links and the rest never."""
    found = []
    for root, dirs, names in os.walk(run_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not os.path.islink(os.path.join(root, d)))
        for name in sorted(names):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, run_dir).replace(os.sep, "/")
            if not excluded(rel, final) and os.path.isfile(path) and not os.path.islink(path):
                found.append(rel)
    return found


def take(run_dir, final=False):
    """The run's files as one epoch left them (module docstring), or None to try again in a moment."""
    run_dir = os.fspath(run_dir)
    pieces = {}
    try:
        status_piece = _open(os.path.join(run_dir, run_format.STATUS))
    except OSError:
        return None  # the trainer has not written its first status yet
    pieces[run_format.STATUS] = status_piece
    snap = Snapshot(None, None, pieces)
    try:
        snap.status = snap.json(run_format.STATUS) or {}
        snap.epoch = snap.status.get("epoch") if isinstance(snap.status.get("epoch"), int) else 0
        files = list_files(run_dir, final)
        first = [r for r in ("backup/training_metadata.json", "backup/callbacks.json") if r in files]  # see the module docstring
        for rel in first + [r for r in files if r not in first]:
            if rel in pieces:
                continue
            try:
                pieces[rel] = _open(os.path.join(run_dir, rel))
            except OSError:
                continue  # gone since the listing (a temp file renamed, a backup removed at the end)
        if not final and not _one_epoch(snap):
            snap.close()
            return None
        _cut_history(snap)
        return snap
    except BaseException:
        snap.close()
        raise


def _one_epoch(snap):
    """The backup, best.keras and history.csv are those of status.json's epoch."""
    pieces, epoch = snap.pieces, snap.epoch
    meta, callbacks = snap.json("backup/training_metadata.json"), snap.json("backup/callbacks.json")
    if "backup/training_metadata.json" not in pieces:
        # no backup yet, removed at the end, or a cross-validation (its folds' backups are stored as they are: a CV run
        # continues on its own host only)
        return epoch == 0 or snap.status.get("state") not in ("starting", "running") or run_format.CV_PLAN in pieces
    if not isinstance(meta, dict) or meta.get("epoch") != epoch or not isinstance(callbacks, dict) or callbacks.get("epoch") != epoch:
        return False
    written = pieces["backup/training_metadata.json"].stat.st_mtime_ns
    for rel in ("backup/latest.weights.h5", run_format.BEST_MODEL):
        if rel in pieces and pieces[rel].stat.st_mtime_ns > written:
            return False
    if "backup/latest.weights.h5" not in pieces:
        return False
    rows = _history_rows(snap)
    return rows is None or sum(1 for r in rows if r < epoch) >= epoch


def _history_rows(snap):
    piece = snap.pieces.get(run_format.HISTORY)
    if piece is None:
        return None
    lines = piece.read_all().decode("utf-8", "replace").splitlines()
    return [int(line.split(",", 1)[0]) for line in lines[1:] if line.split(",", 1)[0].isdigit()]


def _cut_history(snap):
    """history.csv without the rows of epochs after the snapshot's (a resume would train them again)."""
    piece = snap.pieces.get(run_format.HISTORY)
    if piece is None or "backup/training_metadata.json" not in snap.pieces:
        return
    meta = snap.json("backup/training_metadata.json")
    epoch = meta.get("epoch") if isinstance(meta, dict) else None
    if not isinstance(epoch, int):
        return
    lines = piece.read_all().decode("utf-8", "replace").splitlines(keepends=True)
    keep = lines[:1] + [line for line in lines[1:] if not line.split(",", 1)[0].isdigit() or int(line.split(",", 1)[0]) < epoch]
    if len(keep) != len(lines):
        piece.close()
        snap.pieces[run_format.HISTORY] = Piece(data="".join(keep).encode(), stat=piece.stat)
