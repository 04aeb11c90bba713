"""trainer/data/npzfile.py: .npy headers read without ast/compile, the same as numpy reads them,
and safe beside TensorFlow tracing tf.functions in another thread (CPython 3.11, gh-106905)."""

import io
import zipfile

import numpy as np
import pytest

from trainer.data.npzfile import parse_header, read_array, read_header, read_shape

ARRAYS = {
    "float32 frames": np.arange(12, dtype=np.float32).reshape(3, 4),
    "0-d": np.array(2.5),
    "empty": np.zeros((0,), np.float32),
    "empty in the middle": np.zeros((3, 0, 2), ">i2"),
    "big-endian": np.arange(6, dtype=">f8").reshape(2, 3),
    "fortran order": np.asfortranarray(np.arange(12, dtype=np.int64).reshape(3, 4)),
    "4-d": np.ones((1, 2, 1, 3), np.uint8),
    "bool": np.array([True, False]),
    "complex": np.array([1 + 2j], np.complex64),
    "unicode": np.array(["ab", "c"]),
    "bytes": np.array([b"abc"]),
    "datetime": np.array(["2026-01-01"], "M8[ns]"),
    "timedelta": np.array([5], "m8[s]"),
    "void": np.zeros(2, "V8"),
    "int8 scalar": np.int8(-3),
}


def npy_bytes(arr, version=None):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asanyarray(arr), version=version, allow_pickle=False)
    return buf.getvalue()


def numpys_header(raw):
    fp = io.BytesIO(raw)
    version = np.lib.format.read_magic(fp)
    read = {(1, 0): np.lib.format.read_array_header_1_0}.get(version, np.lib.format.read_array_header_2_0)
    return read(fp), fp.tell()


@pytest.mark.parametrize("version", [None, (2, 0), (3, 0)])
@pytest.mark.parametrize("name", list(ARRAYS))
def test_headers_read_as_numpy_reads_them(name, version):
    raw = npy_bytes(ARRAYS[name], version)
    fp = io.BytesIO(raw)
    header = read_header(fp, "x.npy")
    assert (header, fp.tell()) == numpys_header(raw)  # and left at the data, as numpy leaves it


@pytest.mark.parametrize("name", list(ARRAYS))
def test_arrays_of_an_npz_read_as_numpy_reads_them(tmp_path, name):
    path = tmp_path / "clip.npz"
    np.savez_compressed(path, video_features=ARRAYS[name])
    got = read_array(path, "video_features")
    want = np.load(path, allow_pickle=False)["video_features"]
    assert got.dtype == want.dtype and got.shape == want.shape and read_shape(path, "video_features") == want.shape
    assert got.tobytes(order="A") == want.tobytes(order="A") and got.flags.f_contiguous == want.flags.f_contiguous


def test_other_writers_spacing_and_key_order_are_read():
    assert parse_header("{\"shape\":(3,4),'descr':'<f4','fortran_order':False}\n", "x") == ((3, 4), False, np.dtype("<f4"))


BAD_HEADERS = {
    "structured dtype": ("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", "structured dtype"),
    "object array": ("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", "allow_pickle"),
    "a shape that is an int": ("{'descr': '<f4', 'fortran_order': False, 'shape': (5), }", "unreadable"),
    "negative shape": ("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 2), }", "unreadable"),
    "code": ("{'descr': __import__('os').system('true'), 'fortran_order': False, 'shape': (2,), }", "unreadable"),
    "call in the shape": ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,) + f(), }", "comma is missing"),
    "a missing key": ("{'descr': '<f4', 'shape': (2,), }", "expected exactly descr, fortran_order, shape"),
    "an extra key": ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': True, }", "expected exactly"),
    "a key twice": ("{'descr': '<f4', 'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", "appears twice"),
    "fortran_order not a bool": ("{'descr': '<f4', 'fortran_order': 'yes', 'shape': (2,), }", "not True or False"),
    "descr not a dtype": ("{'descr': '<q9', 'fortran_order': False, 'shape': (2,), }", "is not a dtype"),
    "descr with a comma": ("{'descr': 'f4,i4', 'fortran_order': False, 'shape': (2,), }", "not a simple dtype string"),
    "not a dict": ("[1, 2]", "not a dict"),
    "no newline": ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }  ", "does not end with a newline"),
}


@pytest.mark.parametrize("name", list(BAD_HEADERS))
def test_anything_but_the_npy_format_is_a_value_error_naming_the_file(tmp_path, name):
    header, why = BAD_HEADERS[name]
    text = header if name == "no newline" else header + "\n"
    raw = b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1") + b"\0" * 64
    path = tmp_path / "clip.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("video_features.npy", raw)
    with pytest.raises(ValueError) as e:
        read_array(path, "video_features")
    assert str(path) in str(e.value) and why in str(e.value), str(e.value)


@pytest.mark.parametrize("raw, why", [
    (b"PK\x03\x04junk", "not a .npy array"),
    (b"\x93NUMPY\x09\x09\x10\x00", "version 9.9 is not one of 1.0, 2.0, 3.0"),
    (b"\x93NUMPY\x02\x00\xff\xff\xff\x00{", "header of 16777215 bytes"),
    (b"\x93NUMPY\x01\x00\x40\x00{'descr'", "truncated (8 of 64 bytes)"),
])
def test_a_broken_preamble_is_a_value_error_naming_the_file(raw, why):
    with pytest.raises(ValueError) as e:
        read_header(io.BytesIO(raw), "clip.npz (video_features.npy)")
    assert "clip.npz (video_features.npy)" in str(e.value) and why in str(e.value), str(e.value)
