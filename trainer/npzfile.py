"""Reading one array of an NPZ file from several threads, safely and without pickle.

    arr = read_array("clip.npz", "video_features")    # ValueError for an object array, KeyError if absent
    shape = read_shape("clip.npz", "video_features")  # from the header only

numpy parses every .npy header with ast.literal_eval. CPython 3.11's compiler keeps its AST
recursion depth in shared state, so parses in parallel threads can fail with "SystemError: AST
constructor recursion depth mismatch" (python/cpython gh-106905; seen here in the validation
pool on 3.11.7). The header parse (microseconds) is therefore taken under one lock; reading and
decompressing the data (the slow part) stays parallel.
"""

import math
import threading
import zipfile

import numpy as np

HEADER_LOCK = threading.Lock()


def _header(fp):
    version = np.lib.format.read_magic(fp)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    with HEADER_LOCK:
        return reader(fp)


def read_shape(path, key):
    with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as fp:
        return _header(fp)[0]


def read_array(path, key):
    """The array `key` of the NPZ at `path` (read-only). Never unpickles: an object array is a
    ValueError that says so. KeyError if the archive has no such array; zipfile/zlib errors as raised."""
    with zipfile.ZipFile(path) as zf:
        if f"{key}.npy" not in zf.namelist():
            raise KeyError(key)
        with zf.open(f"{key}.npy") as fp:
            shape, fortran_order, dtype = _header(fp)
            if dtype.hasobject:
                raise ValueError(f"{key!r} is an object array: reading it would need allow_pickle, which is never used")
            size = math.prod(shape) * dtype.itemsize
            data = fp.read(size)
    if len(data) != size:
        raise ValueError(f"{key!r} is truncated: {len(data)} of {size} bytes")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")
