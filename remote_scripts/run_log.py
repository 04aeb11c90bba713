"""A run's log as `fab monitor`, `fab logs` and follow_log.sh show it: its end, without TensorFlow's noise
(standard library only; run_state.py's `tail` and `quiet` commands).

    tail(path, 15)          # the last 15 non-blank lines, reading only the file's end; raw=True keeps the noise
    quiet(lines)            # `lines` without TensorFlow's C++ log lines that say nothing about the run
"""

import os
import re

# TensorFlow's C++ log lines that say nothing about the run: its info and warning lines (absl's
# `W0000 00:00:1764000000.000000 4242 file.cc:55] ...`, whose seconds are the epoch's before absl::InitializeLog, and
# the older `2026-12-06 10:00:00.123456: I tensorflow/.../file.cc:153] ...`), absl's preamble, cpu_feature_guard's
# second line, and the error-level lines every start prints on some machines (a second registration of a CUDA
# library, oneDNN's DT_BOOL note). Other errors and every fatal line stay: they explain a crash.
# `fab monitor` and `fab logs` leave these out unless --raw.
_ABSL = r"(?:{0}\d{{4}} \d\d:\d\d:\d+\.\d+\s+\d+ [\w./-]+:\d+\] |\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: {0} [\w./-]+:\d+\] )"
TF_NOISE = re.compile(_ABSL.format("[IW]")
                      + "|" + _ABSL.format("E") + r"(?:Unable to register cu\w+ factory|oneDNN supports DT_\w+ only"
                                                   r"|computation placer already registered)"
                      + r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
                      r"|To enable the following instructions: .* in other operations, rebuild TensorFlow")
TAIL_MAX_BYTES = 8 * 2**20  # the log's end read at most: past it, noise alone is not searched further


def quiet(lines):
    """`lines` without TensorFlow's C++ log lines that say nothing about the run (TF_NOISE)."""
    return [line for line in lines if not TF_NOISE.match(line)]


def tail(path, lines, raw=False):
    """The last `lines` non-blank lines of a text file, reading only its end; without TensorFlow's C++ log lines
    unless `raw`."""
    keep = (lambda found: found) if raw else quiet
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:  # a log that is a link is not read
            f.seek(0, os.SEEK_END)
            size = f.tell()
            block, data = 8192, b""
            while size > 0 and len(data) < TAIL_MAX_BYTES and (
                    data.count(b"\n") <= lines or len(keep(data.decode("utf-8", "replace").splitlines())) <= lines):
                step = min(block, size)
                size -= step
                f.seek(size)
                data = f.read(step) + data
                block = min(block * 2, 1 << 20)
    except OSError:
        return []
    text = data.decode("utf-8", "replace").replace("\r", "\n")
    return keep([line for line in text.splitlines() if line.strip()])[-lines:] if lines > 0 else []
