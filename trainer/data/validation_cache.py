"""The outcome of validating each feature file, kept between runs: a second validation of unchanged data only stats
its files (trainer/data/validation.py).

    cache = Cache(default_cache_dir(), dirs, key, dim)
    cache.get(path)             # the outcome check_file gave, or None (new, changed, or another key or width)
    cache.put(path, outcome)    # after get, and after the file was read
    cache.save()
"""

import hashlib
import json
import os
import time
from pathlib import Path

from trainer.run_format import run_format

CACHE_VERSION = 1
MAX_AGE_DAYS = 30  # a validation cache unused this long is removed


class Cache:
    """Outcome of check_file per (real path, size, mtime, feature key, width), kept as JSON: one file per set of data
    directories (named by a hash of their real paths) in `folder`. It holds only the files the last validation of
    that set found, so it stays the size of the data; a cache file unused for MAX_AGE_DAYS is removed. A cache that
    cannot be read or written (removed meanwhile by another trainer, a read-only or full disk) is only a slower run."""

    def __init__(self, folder, dirs, key, dim):
        self.tag = f"{key}:{dim}"
        name = hashlib.sha256(json.dumps(sorted(str(Path(d).resolve()) for d in dirs)).encode()).hexdigest()[:24]
        self.path = Path(folder) / f"{name}.json" if folder else None
        self.data, self.dirty = {}, False
        self.before = {}  # real path -> its stamp when `get` looked, before the file was read: the files found this time
        self.real_dirs = {}  # a folder as spelt -> its real path
        if self.path and self.path.is_file():
            try:
                raw = json.loads(self.path.read_text())
            except (OSError, ValueError):
                raw = None
            if isinstance(raw, dict) and raw.get("version") == CACHE_VERSION and isinstance(raw.get("files"), dict):
                self.data = raw["files"]

    def _stamp(self, path):
        """[size, mtime, key:width] of the file, or None when it cannot be read (gone meanwhile)."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        return [st.st_size, st.st_mtime_ns, self.tag]

    def _real(self, path):
        """The file's real path: its folder's, resolved once per folder, unless the file itself is a link."""
        folder, name = os.path.split(path)
        if folder not in self.real_dirs:
            self.real_dirs[folder] = os.path.realpath(folder)
        real = os.path.join(self.real_dirs[folder], name)
        return os.path.realpath(real) if os.path.islink(real) else real

    def get(self, path):
        """The cached outcome of the file at `path` (any spelling of it: relative, through a link), or None."""
        real = self._real(path)
        stamp = self.before[real] = self._stamp(path)
        hit = self.data.get(real)
        if stamp and isinstance(hit, dict) and hit.get("stamp") == stamp and isinstance(hit.get("outcome"), list):
            return tuple(hit["outcome"])
        return None

    def put(self, path, outcome):
        """Keep the outcome of the file at `path`, read after `get`: only if the file is as it was then (not replaced
        or removed while it was read)."""
        real = self._real(path)
        stamp = self._stamp(path)
        if stamp is None or stamp != self.before.get(real):
            self.data.pop(real, None)
            return
        self.data[real] = {"stamp": stamp, "outcome": list(outcome)}
        self.dirty = True

    def save(self):
        """Write the outcomes of the files found this time (none of a file since removed), and remove stale caches."""
        if not self.path:
            return
        try:
            self._save()
        except OSError:
            pass  # the next run reads its files again

    def _save(self):
        kept = {path: hit for path, hit in self.data.items() if path in self.before}
        if self.dirty or len(kept) != len(self.data) or not self.path.is_file():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            run_format.write_json(self.path, {"version": CACHE_VERSION, "files": kept}, indent=None)
        else:
            os.utime(self.path)  # used: not stale
        cutoff = time.time() - MAX_AGE_DAYS * 86400
        self.path.parent.with_suffix(".json").unlink(missing_ok=True)  # the one cache file of earlier versions, unbounded
        for other in self.path.parent.glob("*.json"):
            try:
                if other.stat().st_mtime < cutoff:
                    other.unlink()
            except FileNotFoundError:
                pass  # another trainer removed it first


def default_cache_dir():
    """The folder of the validation caches."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "facenet-deploy" / "validate-cache"
