"""Every clip's frames in one contiguous file, memory-mapped: the first epoch reads no NPZ.

    pack(paths, "video_features", "runs/.packed")        # preflight (`validate --pack DIR`): frames.npy + index.json
    found = open_pack("runs/.packed", paths)              # (frames memmap, {path: (offset, frames)}), or (None, why)

Reading a clip from its NPZ (zip directory, header, CRC, copy) costs more than the training step
needs in the first epoch; the pack is written once on the host, after the upload, where it is
reused by every run on the same files. Each entry keeps its file's size and mtime: a file that
changed since is not read from the pack (the whole pack is then unused, and the run says so).
The array is float32 `.npy`, opened with numpy's memmap, never with pickle.
"""

import json
import os
from pathlib import Path

import numpy as np

from trainer.data.npzfile import read_array, read_shape
from trainer.training.status import write_json_atomic


def _stamp(path):
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _index(pack_dir):
    try:
        return json.loads((Path(pack_dir) / "index.json").read_text())
    except (OSError, ValueError):
        return None


def pack(paths, key, pack_dir, progress=None):
    """Write frames.npy and index.json for `paths` in `pack_dir`; nothing is rewritten when the pack
    already holds these files unchanged. Returns (number of clips, whether it was written)."""
    pack_dir = Path(pack_dir)
    paths = [str(p) for p in paths]
    old = _index(pack_dir)
    if old and old.get("key") == key and all(p in old["files"] and old["files"][p][2:] == _stamp(p) for p in paths):
        return len(paths), False
    shapes = [read_shape(p, key) for p in paths]
    dims = {s[1] for s in shapes}
    if len(dims) > 1:
        raise ValueError(f"cannot pack clips of different feature dimensions {sorted(dims)}")
    pack_dir.mkdir(parents=True, exist_ok=True)
    total = sum(s[0] for s in shapes)
    tmp = pack_dir / ".frames.npy.tmp"
    frames = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(total, dims.pop() if dims else 0))
    files, offset = {}, 0
    for i, (path, shape) in enumerate(zip(paths, shapes)):
        frames[offset : offset + shape[0]] = read_array(path, key)
        files[path] = [offset, shape[0], *_stamp(path)]
        offset += shape[0]
        if progress:
            progress(i + 1, len(paths))
    frames.flush()
    del frames
    (pack_dir / "index.json").unlink(missing_ok=True)  # never an index over a half-replaced array
    os.replace(tmp, pack_dir / "frames.npy")
    write_json_atomic(pack_dir / "index.json", {"key": key, "files": files})
    return len(paths), True


def open_pack(pack_dir, paths, key="video_features"):
    """(frames, {path: (offset, frames)}) when the pack in `pack_dir` holds every one of `paths`
    unchanged; else (None, the reason, naming a file)."""
    index = _index(pack_dir)
    if index is None or not (Path(pack_dir) / "frames.npy").is_file():
        return None, f"no pack in {pack_dir}"
    if index.get("key") != key:
        return None, f"the pack in {pack_dir} holds key {index.get('key')!r}, not {key!r}"
    where = {}
    for p in map(str, paths):
        entry = index["files"].get(p)
        if entry is None:
            return None, f"{p} is not in the pack in {pack_dir}"
        if entry[2:] != _stamp(p):
            return None, f"{p} changed since it was packed"
        where[p] = (entry[0], entry[1])
    return np.load(Path(pack_dir) / "frames.npy", mmap_mode="r"), where
