"""Find, label and validate FaceNet feature files; nothing is dropped without a reason.

    result = validate_dirs(["data/crema-d"], cfg["data"])
    result.accepted           # [Entry(path=..., emotion="ANG", actor="crema-d:1078", frames=74), ...]
    require_trainable(result, cfg["data"]["classes"])   # DataError (exit 2) if it cannot train

Every file is either accepted or rejected with one reason from REASONS. Files are read
in parallel without `allow_pickle`, and the outcome is cached by (path, size, mtime) so a
second run over unchanged data only stats the files.
"""

import collections
import json
import os
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.data.labels import Labeller
from trainer.data.npzfile import NotAnNpz, npz_keys, read_array
from trainer.data.validation_cache import Cache
from trainer.errors import DataError
from trainer.run_format import run_format

REASONS = ("corrupt", "missing-key", "wrong-shape", "empty", "non-finite", "object-array", "unknown-label", "bad-name")


@dataclass
class Entry:
    path: str
    status: str  # "accepted" or "rejected"
    reason: str | None = None
    detail: str | None = None
    emotion: str | None = None
    actor: str | None = None
    corpus: str | None = None
    frames: int | None = None
    keys: list | None = None  # keys present, for missing-key


@dataclass
class ValidationResult:
    dirs: list
    entries: list

    @property
    def accepted(self):
        return [e for e in self.entries if e.status == "accepted"]

    @property
    def rejected(self):
        return [e for e in self.entries if e.status == "rejected"]

    def manifest(self):
        """JSON-ready: one record per file (path, status, reason, emotion, actor, frames)."""
        fields = ("path", "status", "reason", "detail", "emotion", "actor", "corpus", "frames")
        return {
            "dirs": [str(d) for d in self.dirs],
            "files": [{k: getattr(e, k) for k in fields} for e in self.entries],
        }


UNFINISHED_UPLOAD = run_format.UPLOAD_PARTIAL_DIR  # deploy/host/sync.py's --partial-dir: an interrupted `fab sync-data` leaves its files here
UPLOAD_MARKER = run_format.UPLOAD_MARKER  # deploy/host/sync.py: there from before an upload until it is verified


def find_files(dirs):
    """All *.npz files under each directory, recursively, sorted; DataError for a missing dir, and for
    a dir that holds an unfinished upload (training on half the data set would be silent)."""
    files = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise DataError(f"Data directory {d} does not exist or is not a directory.")
        found = sorted(p for p in d.rglob("*.npz") if p.is_file())
        if (d / UPLOAD_MARKER).exists():
            raise DataError(f"Data directory {d}: an upload into it has not completed{_expected(d / UPLOAD_MARKER, len(found))} "
                            f"({d / UPLOAD_MARKER} is there: `fab sync-data` writes it before it sends and removes it once the "
                            "host holds the same files and bytes). Run `fab sync-data` again to finish it (rsync resumes), or "
                            "delete that file to train on the files already in place.")
        partial = [p for p in found if UNFINISHED_UPLOAD in p.relative_to(d).parts[:-1]]
        if partial:
            raise DataError(
                f"Data directory {d} holds {len(partial)} file(s) of an unfinished upload in "
                f"{partial[0].parent} (`fab sync-data` was interrupted). Run `fab sync-data` again to finish it "
                "(rsync resumes), or delete that folder to train on the files already in place.")
        files.extend(str(p) for p in found)
    return files


def _expected(marker, npz_files):
    """What the marker says the upload brings, against what is here; '' when it cannot be read."""
    try:
        expected = json.loads(marker.read_text())
        return f": {npz_files} .npz file(s) here, {int(expected['files'])} file(s) expected from {expected['from']}"
    except (OSError, ValueError, TypeError, KeyError):
        return ""


def check_file(path, feature_key="video_features", feature_dim=512):
    """Read one file and return (reason, detail, frames, keys); reason None when valid."""
    try:
        keys = sorted(npz_keys(path))
    except NotAnNpz as e:
        return "corrupt", e.why, None, None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        return "corrupt", f"cannot be opened as NPZ: {e}", None, None
    if feature_key not in keys:
        return "missing-key", f"no key {feature_key!r}; keys present: {keys}", None, keys
    try:
        arr = read_array(path, feature_key)  # not np.load: numpy's header parse is not thread-safe on 3.11
    except ValueError as e:
        if "allow_pickle" in str(e):
            return "object-array", f"{feature_key!r} is an object array (would need pickle)", None, keys
        if "structured dtype" in str(e):  # trainer/data/npzfile.py reads plain arrays only
            return "wrong-shape", f"expected a numeric (frames, {feature_dim}) array, got a structured dtype", None, keys
        return "corrupt", f"cannot read {feature_key!r}: {e}", None, keys
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        return "corrupt", f"cannot read {feature_key!r}: {e}", None, keys
    if arr.dtype.hasobject:
        return "object-array", f"{feature_key!r} is an object array", None, keys
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        return "wrong-shape", f"expected a numeric (frames, {feature_dim}) array, got dtype {arr.dtype}", None, keys
    if arr.ndim != 2 or arr.shape[1] != feature_dim:
        return "wrong-shape", f"expected shape (frames, {feature_dim}), got {arr.shape}", None, keys
    if arr.shape[0] == 0:
        return "empty", "0 frames", 0, keys
    if np.issubdtype(arr.dtype, np.floating):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            return "non-finite", f"{bad} NaN/inf values", int(arr.shape[0]), keys
    return None, None, int(arr.shape[0]), keys


def validate_dirs(dirs, data_cfg, cache_dir=None, workers=None, progress=None):
    """Validate every *.npz under `dirs`; returns a ValidationResult (never raises for bad files).

    `progress(done, total)` is called as files complete, for a progress display.
    """
    labeller = Labeller(data_cfg["label_map"])
    key, dim = data_cfg["feature_key"], data_cfg["feature_dim"]
    files = find_files(dirs)
    cache = Cache(cache_dir, dirs, key, dim)
    entries = [None] * len(files)
    to_read = []
    for i, path in enumerate(files):
        emotion, actor, problem = labeller.label(path)
        base = Entry(path=path, status="rejected", emotion=emotion, actor=actor, corpus=actor and actor.split(":")[0])
        if problem:
            base.reason, base.detail = problem
            entries[i] = base
            continue
        cached = cache.get(path)
        if cached is not None:
            entries[i] = _finish(base, *cached)
        else:
            entries[i] = base
            to_read.append(i)
    done = len(files) - len(to_read)
    if progress:
        progress(done, len(files))
    workers = workers or min(32, 4 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, outcome in zip(to_read, pool.map(lambda i: check_file(files[i], key, dim), to_read)):
            cache.put(files[i], outcome)
            entries[i] = _finish(entries[i], *outcome)
            done += 1
            if progress:
                progress(done, len(files))
    cache.save()
    return ValidationResult(dirs=[str(d) for d in dirs], entries=entries)


def _finish(entry, reason, detail, frames, keys):
    entry.frames, entry.keys = frames, keys
    if reason is None:
        entry.status = "accepted"
    else:
        entry.reason, entry.detail = reason, detail
    return entry


def require_trainable(result, classes):
    """DataError (exit 2) unless there is at least one accepted file for every class."""
    accepted = result.accepted
    where = ", ".join(result.dirs)
    if not accepted:
        found = len(result.entries)
        if not found:
            raise DataError(f"No .npz files found in {where} (searched recursively). Is this the feature directory?")
        raise DataError(
            f"No valid feature file in {where}: found {found} .npz files, 0 accepted. "
            f"Most common problem: {most_common_problem(result.rejected)}"
        )
    counts = collections.Counter(e.emotion for e in accepted)
    missing = [c for c in classes if counts[c] == 0]
    if missing:
        have = {c: counts[c] for c in classes}
        raise DataError(
            f"Class(es) {missing} have no valid file in {where} (accepted per class: {have}). "
            "Add data for them or change data.classes / data.label_map."
        )


def most_common_problem(rejected):
    """One sentence on the most frequent rejection reason, with the fix where one is known."""
    if not rejected:
        return "none"
    reason, n = collections.Counter(e.reason for e in rejected).most_common(1)[0]
    group = [e for e in rejected if e.reason == reason]
    if reason == "missing-key":
        keysets = collections.Counter(tuple(e.keys or ()) for e in group)
        keys = list(keysets.most_common(1)[0][0])
        wanted = group[0].detail.split(";")[0].removeprefix("no key ")
        return f"{n} files have no key {wanted}; they have keys {keys}: set data.feature_key."
    return f"{n} files rejected as {reason} (e.g. {group[0].path}: {group[0].detail})."


def write_manifest(result, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.manifest(), indent=1))


def entries_from_manifest(path):
    """Accepted entries of a manifest written by write_manifest."""
    files = json.loads(Path(path).read_text())["files"]
    return [Entry(**f) for f in files if f["status"] == "accepted"]



