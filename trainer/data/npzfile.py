"""Reading one array of an NPZ file from several threads, safely and without pickle.

    arr = read_array("clip.npz", "video_features")    # ValueError for an object array, KeyError if absent
    shape = read_shape("clip.npz", "video_features")  # from the header only
    keys = npz_keys("clip.npz")                        # ["video_features"]; NotAnNpz for a file that is no zip

A file named .npz that is no zip archive (a text file, a bare .npy, a truncated copy) is a NotAnNpz
that says what the file is instead, naming it: numpy's np.load would suggest allow_pickle, which the
trainer never uses.

numpy parses every .npy header with ast.literal_eval. CPython 3.11's AST converter keeps its
recursion depth in per-interpreter state, so a parse in a loader thread while another thread
compiles Python (TensorFlow traces a tf.function: autograph parses and compiles source) can fail
with "SystemError: AST constructor recursion depth mismatch" (python/cpython gh-106905; seen here
on 3.11.7). A lock would serialise our own readers only. So the header, a small dict literal of a
fixed format (numpy.lib.format), is read here by a strict parser that uses neither ast nor
compile; anything else in a header is a ValueError that names the file.
"""

import math
import re
import zipfile

import numpy as np

MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK"  # every zip part starts with PK and two bytes
LENGTH_BYTES = {(1, 0): 2, (2, 0): 4, (3, 0): 4}  # header length field of each format version (little-endian)
MAX_HEADER_BYTES = 10000  # numpy's own limit (max_header_size) for headers it reads without allow_pickle

# {'descr': '<f4', 'fortran_order': False, 'shape': (10, 512), } as numpy writes it (keys sorted, a
# trailing comma); other writers' spacing, key order and missing trailing comma are accepted too
_STRING = r"'[^'\\\n]*'|\"[^\"\\\n]*\""
_TUPLE = r"\(\s*\)|\(\s*[0-9]+\s*,\s*\)|\(\s*[0-9]+(?:\s*,\s*[0-9]+)+\s*,?\s*\)"  # (), (5,), (10, 512): never (5), an int
_ITEM = re.compile(rf"\s*({_STRING})\s*:\s*({_TUPLE}|True|False|{_STRING}|\[)\s*(,)?")
MAX_ARRAY_BYTES = 2**34  # 16 GiB: far above any clip; a larger header is hostile or corrupt
_DESCR = re.compile(r"[<>|=]?[A-Za-z?][0-9]*(\[[0-9]*[A-Za-z]+\])?")  # '<f4', '|u1', '<U10', '<M8[ns]': one field, no structure


def parse_header(text, where):
    """(shape, fortran_order, dtype) from the text of a .npy header; ValueError naming `where` otherwise."""
    def bad(why):
        return ValueError(f"{where}: {why}. Expected a .npy header like \"{{'descr': '<f4', 'fortran_order': False, "
                          f"'shape': (10, 512), }}\". Received: {text[:200]!r}")

    if not text.endswith("\n"):
        raise bad("the header does not end with a newline")
    body = text.rstrip(" \n")
    if not (body.startswith("{") and body.endswith("}")):
        raise bad("the header is not a dict")
    found, pos, inner = {}, 0, body[1:-1]
    while inner[pos:].strip():
        m = _ITEM.match(inner, pos)
        if not m:
            raise bad(f"unreadable at {inner[pos:pos + 40]!r}")
        key, value = m.group(1)[1:-1], m.group(2)
        if value == "[":
            raise bad(f"{key!r} holds a list: a structured dtype, which the trainer does not read")
        if key in found:
            raise bad(f"the key {key!r} appears twice")
        found[key] = value
        pos = m.end()
        if not m.group(3) and inner[pos:].strip():
            raise bad(f"a comma is missing after {key!r}")
    if set(found) != {"descr", "fortran_order", "shape"}:
        raise bad(f"keys {sorted(found)}; expected exactly descr, fortran_order, shape")
    descr, order, shape = found["descr"], found["fortran_order"], found["shape"]
    if descr[0] not in "'\"" or not _DESCR.fullmatch(descr[1:-1]):
        raise bad(f"descr {descr} is not a simple dtype string")
    if order not in ("True", "False"):
        raise bad(f"fortran_order {order} is not True or False")
    if not shape.startswith("("):
        raise bad(f"shape {shape} is not a tuple of integers")
    try:
        dtype = np.dtype(descr[1:-1])
    except (TypeError, ValueError) as e:
        raise bad(f"descr {descr} is not a dtype ({e})") from None
    if dtype.hasobject:
        raise ValueError(f"{where} is an object array: reading it would need allow_pickle, which is never used")
    if dtype.itemsize == 0:
        raise bad(f"descr {descr} has items of zero bytes")
    dims = tuple(int(n) for n in re.findall(r"[0-9]+", shape))
    if math.prod(dims) * dtype.itemsize > MAX_ARRAY_BYTES:
        raise bad(f"shape {shape} of {descr} would be {math.prod(dims) * dtype.itemsize} bytes, more than any clip ({MAX_ARRAY_BYTES})")
    return dims, order == "True", dtype


def read_header(fp, where):
    """(shape, fortran_order, dtype) of the .npy stream `fp`, positioned at its start; leaves `fp` at the data."""
    magic = fp.read(8)
    if len(magic) != 8 or not magic.startswith(MAGIC):
        raise ValueError(f"{where}: not a .npy array (it starts with {magic!r}, expected {MAGIC!r} and a version)")
    version = (magic[6], magic[7])
    if version not in LENGTH_BYTES:
        raise ValueError(f"{where}: .npy format version {version[0]}.{version[1]} is not one of 1.0, 2.0, 3.0")
    field = fp.read(LENGTH_BYTES[version])
    length = int.from_bytes(field, "little")
    if len(field) != LENGTH_BYTES[version] or length > MAX_HEADER_BYTES:
        raise ValueError(f"{where}: a .npy header of {length} bytes (at most {MAX_HEADER_BYTES} are read)")
    raw = fp.read(length)
    if len(raw) != length:
        raise ValueError(f"{where}: the .npy header is truncated ({len(raw)} of {length} bytes)")
    try:
        text = raw.decode("utf8" if version == (3, 0) else "latin1")
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: the .npy header is not UTF-8 ({e})") from None
    return parse_header(text, where)


class NotAnNpz(ValueError):
    """The file at `path` is not a zip archive: str() names the file, `why` says what it is instead
    ("a bare .npy array, not an NPZ archive ...")."""

    def __init__(self, path, why):
        super().__init__(f"{path} is {why}")
        self.path, self.why = path, why


def what_it_is(path, error):
    """What the file at `path`, which zipfile refused with `error`, is instead of an NPZ: from its first bytes."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "empty (0 bytes), not an NPZ archive (a zip of .npy arrays)"
    if head.startswith(MAGIC):
        return "a bare .npy array, not an NPZ archive (a zip of .npy arrays): save it with numpy.savez"
    if head.startswith(ZIP_MAGIC):
        return f"a damaged zip archive ({error}): cut short or corrupted in a copy; copy it again"
    return f"not an NPZ archive (a zip of .npy arrays): it starts with {head!r}"


def open_npz(path):
    """zipfile.ZipFile of the NPZ at `path`; NotAnNpz (a ValueError) when the file is no zip archive."""
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise NotAnNpz(path, what_it_is(path, e)) from None


def npz_keys(path):
    """The names of the arrays in the NPZ at `path`, as numpy's NpzFile.files lists them."""
    with open_npz(path) as zf:
        return [name.removesuffix(".npy") for name in zf.namelist()]


def read_shape(path, key):
    with open_npz(path) as zf, zf.open(f"{key}.npy") as fp:
        return read_header(fp, f"{path} ({key}.npy)")[0]


def read_array(path, key):
    """The array `key` of the NPZ at `path` (read-only). Never unpickles: an object array is a
    ValueError that says so, a file that is no zip a NotAnNpz. KeyError if the archive has no such
    array; other zipfile/zlib errors as raised."""
    with open_npz(path) as zf:
        if f"{key}.npy" not in zf.namelist():
            raise KeyError(key)
        with zf.open(f"{key}.npy") as fp:
            shape, fortran_order, dtype = read_header(fp, f"{path} ({key}.npy)")
            size = math.prod(shape) * dtype.itemsize
            data = fp.read(size)
    if len(data) != size:
        raise ValueError(f"{key!r} is truncated: {len(data)} of {size} bytes")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")
