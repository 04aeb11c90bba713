"""What a run directory may hold, so that a run brought from elsewhere (a fetched, edited or
tampered copy) cannot turn the trainer or the deploy against the host it lands on.

    special_entries(run_dir)           # ["history.csv (a link to /etc/shadow)", ...]: neither a regular file nor a folder
    refuse_special_entries(run_dir)    # UserError naming them
    check_run_paths(run_dir)           # every path in manifest.json, split.json, cv-plan.json: DataError naming file and key
    open_log(path)                     # append to train.log / history.csv without following a link

A run directory holds regular files and folders only: a link in it (`train.log ->
~/.ssh/authorized_keys`, `logs -> ~/.ssh`) would make the trainer write through it. A path in
its JSON files is a string without control characters (a newline in a printed path forges log
lines), and a data path lies inside one of the run's data dirs.
"""

import json
import os
import stat
from pathlib import Path

from trainer.errors import DataError, UserError
from trainer.results.visible import visible
from trainer.run_format import run_format

KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


def special_entries(root):
    """Entries under `root` (not following links) that are neither regular files nor folders, as
    "relative/path (what it is)", names with control characters shown (trainer/results/visible.py)."""
    found = []

    def walk(folder, prefix):
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:  # what cannot be listed cannot be vouched for
            found.append(f"{visible(prefix or '.', '')} (cannot be read: {e.strerror})")
            return
        for entry in entries:
            rel = prefix + entry.name
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode):
                found.append(f"{visible(rel, '')} (a link to {visible(os.readlink(entry.path), '')})")
            elif stat.S_ISDIR(mode):
                walk(entry.path, rel + "/")
            elif not stat.S_ISREG(mode):
                found.append(f"{visible(rel, '')} ({KINDS.get(stat.S_IFMT(mode), 'not a regular file')})")

    walk(root, "")
    return found


def refuse_special_entries(run_dir, doing):
    """UserError (exit 2) when `run_dir` is a link or holds anything but regular files and folders."""
    run_dir = Path(run_dir)
    if run_dir.is_symlink():
        raise UserError(f"Refusing to {doing}: {run_dir} is a link (to {os.readlink(run_dir)}); a run directory is a folder.")
    found = special_entries(run_dir) if run_dir.is_dir() else []
    if found:
        raise UserError(f"Refusing to {doing}: {run_dir} holds {len(found)} entr{'y' if len(found) == 1 else 'ies'} that "
                        f"{'is' if len(found) == 1 else 'are'} not a regular file or folder: {', '.join(found[:10])}"
                        f"{' ...' if len(found) > 10 else ''}. A run directory holds only regular files and folders: "
                        "remove them (or fetch the run again).")


def check_path(value, where, inside=None):
    """`value` (read from `where`, e.g. "manifest.json files[3].path") as a path: a non-empty string without
    control characters and, given folders `inside`, lexically inside one of them (no `..`). DataError otherwise."""
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: expected a path (a non-empty string). Received: {value!r}")
    shown = visible(value, "")
    if shown != value:
        raise DataError(f"{where} holds a control character (shown as \\x..): {shown!r}. A path never does: the file was "
                        "edited or damaged; start a new run.")
    if inside is not None:
        parts = Path(value).parts
        clean = os.path.normpath(value)
        if ".." in parts or not any(clean.startswith(os.path.normpath(d).rstrip("/") + "/") for d in inside):
            raise DataError(f"{where}: {value} is not inside the run's data dirs ({', '.join(map(str, inside))}). "
                            "The file was edited or damaged; start a new run.")
    return value


def _read(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"Cannot read {path}: {e}. Start a new run.") from None


def check_run_paths(run_dir):
    """Every path the trainer reads from the run's JSON files, checked before anything uses or prints one:
    manifest.json dirs (no control character), its files (inside those dirs), split.json (files of the
    manifest), cv-plan.json data_dirs. DataError naming the file and the key."""
    run_dir = Path(run_dir)
    plan = run_dir / run_format.CV_PLAN
    if plan.is_file():
        dirs = _read(plan).get("data_dirs") or []
        for i, d in enumerate(dirs if isinstance(dirs, list) else [dirs]):
            check_path(d, f"{plan} data_dirs[{i}]")
    manifest_path, split_path = run_dir / run_format.MANIFEST, run_dir / run_format.SPLIT
    if not manifest_path.is_file():
        return
    manifest = _read(manifest_path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("dirs"), list) or not isinstance(manifest.get("files"), list):
        raise DataError(f"{manifest_path}: expected an object with lists 'dirs' and 'files'. Start a new run.")
    dirs = [check_path(d, f"{manifest_path} dirs[{i}]") for i, d in enumerate(manifest["dirs"])]
    accepted = set()
    for i, record in enumerate(manifest["files"]):
        path = check_path(record.get("path") if isinstance(record, dict) else None, f"{manifest_path} files[{i}].path", inside=dirs)
        if record.get("status") == "accepted":
            accepted.add(path)
    if not split_path.is_file():
        return
    split = _read(split_path)
    for key in ("train", "val", "test"):
        entries = (split.get(key) or []) if isinstance(split, dict) else None
        if not isinstance(entries, list):
            raise DataError(f"{split_path} {key}: expected a list of files. Received: {visible(repr(entries))[:200]}")
        for i, path in enumerate(entries):
            check_path(path, f"{split_path} {key}[{i}]", inside=dirs)
            if path not in accepted:
                raise DataError(f"{split_path} {key}[{i}]: {path} is not an accepted file of {manifest_path}. "
                                "The file was edited or damaged; start a new run.")


def open_log(path, mode="a"):
    """`open(path, mode)` ("a" or "w", line-buffered) for a log the trainer writes (train.log, history.csv),
    refusing a link (O_NOFOLLOW) and a file with other names (a hard link): UserError naming it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if mode.startswith("a") else os.O_TRUNC)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError:
        if os.path.islink(path):
            raise UserError(f"Refusing to write {path}: it is a link (to {os.readlink(path)}); the run directory was "
                            "tampered with. Remove the link.") from None
        raise
    if os.fstat(fd).st_nlink > 1:
        os.close(fd)
        raise UserError(f"Refusing to write {path}: the file has other names (hard links, e.g. from `cp -al`), which writing would "
                        "change too. Replace it by a copy of itself (cp, then mv) to continue.")
    return open(fd, mode, buffering=1)
