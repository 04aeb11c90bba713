"""Copy everything the process prints into the run's train.log.

    with tee_to(run_dir / "train.log"):
        ...   # print() and logging reach the terminal and the file

When stdout already goes to that file (the deploy launcher redirects it there), the
file is left to the redirect, so no line is written twice. A train.log that is a link is
refused, never written through (trainer/results/runfiles.open_log).
"""

import contextlib
import logging
import os
import sys

from trainer.results.runfiles import open_log


class _Tee:
    def __init__(self, stream, log):
        self.stream, self.log = stream, log

    def write(self, text):
        self.stream.write(text)
        self.log.write(text)
        return len(text)

    def flush(self):
        self.stream.flush()
        self.log.flush()

    def isatty(self):
        return self.stream.isatty()

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def tee_to(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open_log(path)
    already = _same_file(sys.stdout, path)
    old = sys.stdout, sys.stderr
    if not already:
        sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        yield log
    finally:
        logging.getLogger().removeHandler(handler)
        sys.stdout, sys.stderr = old
        log.close()


def _same_file(stream, path):
    try:
        return os.path.samestat(os.fstat(stream.fileno()), os.stat(path))
    except (OSError, ValueError, AttributeError):
        return False
