"""The trainer's readers of .npz files (generator, normalization: they import Keras) on files that are no npz,
and headers read in threads while tf.functions are traced."""

import gc
import importlib.util
import sys
import threading
import time

import numpy as np
import pytest

from trainer.data.npzfile import NotAnNpz, npz_keys, read_array, read_shape


def _text(path):
    path.write_text("label,file\nANG,1001_IWL_ANG_XX\n")  # a CSV saved under the wrong name


def _bare_npy(path):
    with open(path, "wb") as f:
        np.save(f, np.ones((3, 512), np.float32))


def _cut_short(path):
    np.savez(path, video_features=np.ones((40, 512), np.float32))
    path.write_bytes(path.read_bytes()[:300])


NOT_NPZ = {  # a file named .npz that is no zip: what the error says it is instead
    "text": (_text, "not an NPZ archive (a zip of .npy arrays): it starts with b'label,file\\nANG,1'"),
    "bare .npy": (_bare_npy, "a bare .npy array, not an NPZ archive (a zip of .npy arrays): save it with numpy.savez"),
    "empty": (lambda p: p.write_bytes(b""), "empty (0 bytes), not an NPZ archive"),
    "cut short": (_cut_short, "a damaged zip archive"),
}


def _readers():
    """Every reader of NPZ files in the trainer: (name, call on a path)."""
    from trainer.data import generator, normalization

    return {
        "read_array": lambda p: read_array(p, "video_features"),
        "read_shape": lambda p: read_shape(p, "video_features"),
        "npz_keys": npz_keys,
        "generator.read_length": lambda p: generator.read_length(p, "video_features"),
        "normalization.compute_stats": lambda p: normalization.compute_stats([p]),
        "normalization.load_stats": normalization.load_stats,
    }


@pytest.mark.tf  # the generator and normalization modules import keras
@pytest.mark.parametrize("case", list(NOT_NPZ))
def test_a_file_that_is_no_npz_is_said_to_be_so_by_every_reader_naming_it(tmp_path, case):
    make, says = NOT_NPZ[case]
    path = tmp_path / "1001_IWL_ANG_XX.npz"
    make(path)
    for reader, read in _readers().items():
        with pytest.raises(NotAnNpz) as e:
            read(path)
        message = str(e.value)
        assert message.startswith(f"{path} is ") and says in message, (reader, message)
        assert "pickle" not in message, (reader, message)  # numpy's hint: the trainer never unpickles


class CyclicGarbage:
    """Collected only by the cycle collector, and finalised in Python: wherever a collection happens (inside
    CPython's AST conversion too) Python code runs and another thread may take over, as with TensorFlow's objects."""

    def __init__(self):
        self.me = self

    def __del__(self):
        pass


def traced_functions(folder, count):
    """A module of `count` distinct functions for autograph to convert (it reads their source) and trace."""
    source = "import tensorflow as tf\n\n" + "".join(
        f"def f{i}(x):\n    y = x\n    for _ in tf.range({i % 3 + 1}):\n        if y > 0:\n            y = y * 2.0 + {i}.0\n"
        f"        else:\n            y = y - 1.0\n    return y\n\n" for i in range(count))
    path = folder / "traced_functions.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("traced_functions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [getattr(module, f"f{i}") for i in range(count)]


def expected(i):
    y = 1.0
    for _ in range(i % 3 + 1):
        y = y * 2.0 + i
    return y


@pytest.mark.tf
def test_headers_read_in_threads_while_tf_functions_are_traced(tmp_path):
    """Before: within a second or two, "SystemError: AST constructor recursion depth mismatch" in a reader, or an
    autograph conversion broken by it in the main thread (numpy's ast.literal_eval of the header)."""
    import tensorflow as tf

    paths = []
    for i in range(6):
        paths.append(tmp_path / f"clip{i}.npz")
        np.savez(paths[-1], video_features=np.full((3 + i, 4), i, np.float32))
    functions = traced_functions(tmp_path, 400)
    errors, reads, stop = [], [0], threading.Event()

    def reader():
        while not stop.is_set():
            for i, path in enumerate(paths):
                CyclicGarbage(), CyclicGarbage()
                try:
                    assert read_shape(path, "video_features") == (3 + i, 4)
                except BaseException as e:  # any error of a reader fails the test
                    errors.append(f"reader: {e!r}")
                    return
                reads[0] += 1

    interval, threshold = sys.getswitchinterval(), gc.get_threshold()
    sys.setswitchinterval(1e-6)  # switch threads as often as CPython allows
    gc.set_threshold(50)  # and collect (running finalisers) often
    threads = [threading.Thread(target=reader) for _ in range(4)]
    traced, started = 0, time.monotonic()
    try:
        for t in threads:
            t.start()
        while time.monotonic() - started < 6 and traced < len(functions) and not errors:
            CyclicGarbage()
            try:
                got = float(tf.function(functions[traced])(tf.constant(1.0)))
                assert got == expected(traced), f"f{traced} traced to {got}, expected {expected(traced)}"
            except Exception as e:  # autograph fails the conversion, then the plain `for` fails
                errors.append(f"tracing f{traced}: {e!r}"[:400])
            traced += 1
    finally:
        stop.set()
        for t in threads:
            t.join()
        sys.setswitchinterval(interval)
        gc.set_threshold(*threshold)
    assert not errors, errors[:3]
    assert traced >= 2 and reads[0] >= 100, (traced, reads[0])
