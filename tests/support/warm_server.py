"""A warm program for the tests: `python warm_server.py PROGRAM` imports the program's heavy libraries once, then
forks one child per request, and each child runs the program as a new process would, in the request's folder and
environment, with its stdin on /dev/null and its stdout and stderr in the request's files.

    fab      Fabric, paramiko, boto3, rich, yaml (about 1 s of CPU in a new `fab`); the child runs `fab ARGS` as the
             `fab` script does (fabric.main.program.run)
    trainer  TensorFlow, Keras, numpy and matplotlib's object API (about 5 s of CPU in a new `python -m trainer`),
             imported after trainer/startup.py's settings, as a trainer process imports them; the child runs
             `python -m trainer ARGS` as trainer/__main__.py does (trainer.cli.main). TensorFlow's runtime starts
             in the child: nothing here runs an operation (a forked runtime would not work).

Nothing else of this project is imported here: each child imports deploy/, trainer/ and the fabfile itself, so it
reads its own environment (COLUMNS, FACENET_*, AWS_*) as a new process does. tests/support/warm_runner.py starts
the servers, and starts a real process instead whenever the request's interpreter and library settings (PYTHON*,
TF_*, KERAS_*, ...) differ from the ones a server started with: they act when a library loads.

Protocol, one JSON object per line: request {"argv", "cwd", "env", "stdout", "stderr"} (one file for both when they
are the same path, as with stderr=subprocess.STDOUT) on stdin; answers
{"pid"} when the child started, then {"returncode"} (subprocess's convention: -N for a signal) on stdout.
"""

import io
import json
import os
import signal
import sys
from pathlib import Path

PROGRAM = sys.argv[1] if __name__ == "__main__" else "fab"
ROOT = Path(__file__).resolve().parents[2]

if PROGRAM == "fab":
    import boto3  # noqa: F401  (warm imports: what every fab process would import again)
    import botocore.session  # noqa: F401
    import fabric.main
    import invoke  # noqa: F401
    import paramiko  # noqa: F401
    import rich.console  # noqa: F401
    import rich.table  # noqa: F401
    import yaml  # noqa: F401
else:
    sys.path.insert(0, str(ROOT))
    from trainer import startup

    startup.quiet_tensorflow()  # as `import trainer` does
    startup.keras_without_matplotlib()  # as the CLI does before Keras loads
    del sys.path[0], sys.modules["trainer.startup"], sys.modules["trainer"]  # the child imports the project itself
    import keras  # noqa: F401
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401
    import matplotlib.ticker  # noqa: F401
    import numpy  # noqa: F401
    import tensorflow  # noqa: F401
    import yaml  # noqa: F401

SCRIPT_DIR = str(Path(sys.executable).parent)  # the `fab` script's folder: sys.path[0] of a real fab


def run_fab(argv):
    sys.path[0] = SCRIPT_DIR
    fabric.main.program.run(argv)


def run_trainer(argv):
    """`python -m trainer ARGS`: argv is [python, -m, trainer, ARGS...]; sys.path[0] is the folder it runs in."""
    sys.argv = [str(ROOT / "trainer" / "__main__.py"), *argv[3:]]
    sys.path[0] = os.getcwd()
    from trainer.cli import main

    sys.exit(main())


def child(request):
    """In the forked child: become the program with ARGV. It never returns: what the program raises, SystemExit
    too, leaves the server's loop, and the interpreter ends this process as it ends a new one (a traceback for an
    uncaught exception, and for KeyboardInterrupt a death by SIGINT; threads joined, atexit functions, finalization)."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err = out if request["stderr"] == request["stdout"] else os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    for fd, target in ((null, 0), (out, 1), (err, 2)):
        os.dup2(fd, target)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the server's pipes and whatever else: a new process has 0-2 only
    # as a new interpreter makes them when they are not terminals: stdout block-buffered, stderr written through
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=False)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), errors="backslashreplace", write_through=True)
    sys.argv = list(request["argv"])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    (run_fab if PROGRAM == "fab" else run_trainer)(sys.argv)
    sys.exit(0)  # the program returned


def answer(**fields):
    os.write(1, (json.dumps(fields) + "\n").encode())


def main():
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            child(request)  # never returns
        answer(pid=pid)
        _, status = os.waitpid(pid, 0)
        answer(returncode=-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))


if __name__ == "__main__":
    main()
