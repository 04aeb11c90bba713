"""A warm `fab` for the tests: this process imports Fabric, paramiko, boto3, rich and yaml once, then forks one
child per request, and each child runs `fab ARGS` as the `fab` script does (fabric.main.program.run), in the
request's folder and environment, with its stdin on /dev/null and its stdout and stderr in the request's files.

A fresh `fab` spends about 1 s of CPU importing those libraries before it does anything; the suite starts
several hundred. Nothing of this project is imported here: each child imports deploy/, trainer/ and the
fabfile itself, so it reads its own environment (COLUMNS, FACENET_*, AWS_*) as a new process does. tests/
fab_runner.py starts this server, and starts a real `fab` instead whenever the request's PYTHON* settings
differ from the ones this server started with (they decide sys.path and the interpreter's flags).

Protocol, one JSON object per line: request {"argv", "cwd", "env", "stdout", "stderr"} on stdin; answers
{"pid"} when the child started, then {"returncode"} (subprocess's convention: -N for a signal) on stdout.
"""

import atexit
import io
import json
import os
import signal
import sys
import threading
from pathlib import Path

import boto3  # noqa: F401  (warm imports: what every fab process would import again)
import botocore.session  # noqa: F401
import fabric.main
import invoke  # noqa: F401
import paramiko  # noqa: F401
import rich.console  # noqa: F401
import rich.table  # noqa: F401
import yaml  # noqa: F401

SCRIPT_DIR = str(Path(sys.executable).parent)  # the `fab` script's folder: sys.path[0] of a real fab


def child(request):
    """In the forked child: become `fab ARGV` and exit as it would."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    for fd, target in ((null, 0), (out, 1), (err, 2)):
        os.dup2(fd, target)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the server's pipes and whatever else: a new process has 0-2 only
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=False)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), errors="backslashreplace", line_buffering=True)
    sys.argv = list(request["argv"])
    sys.path[0] = SCRIPT_DIR
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    code = 0
    try:
        fabric.main.program.run(sys.argv)
    except SystemExit as exit:
        code = exit_code(exit.code)
    except KeyboardInterrupt:
        finish()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)  # as the interpreter does for an uncaught KeyboardInterrupt
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    finish()
    os._exit(code)


def exit_code(code):
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def finish():
    """What the interpreter does at exit: wait for non-daemon threads, run atexit functions, flush."""
    try:
        threading._shutdown()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass


def answer(**fields):
    os.write(1, (json.dumps(fields) + "\n").encode())


def main():
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try:
                child(request)
            finally:
                os._exit(70)
        answer(pid=pid)
        _, status = os.waitpid(pid, 0)
        answer(returncode=-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))


if __name__ == "__main__":
    main()
