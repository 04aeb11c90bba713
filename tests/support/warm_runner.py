"""`fab ARGS` and `python -m trainer ARGS` for the tests, answering as `subprocess.run(argv, capture_output=True,
text=True)` does, from a warm fork server (tests/support/warm_server.py) instead of a new interpreter each time: the
same program, in its own process, with its own environment, folder, exit code, stdout and stderr; about 1 s of CPU
cheaper for `fab`, about 5 s for the trainer (TensorFlow and Keras loaded).

A test that signals the process, reads its output as it comes, or measures how the program itself starts uses a
real process (subprocess.Popen), as do requests whose interpreter or library settings differ from the server's.
"""

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

FAB = Path(sys.executable).parent / "fab"
SERVER = Path(__file__).with_name("warm_server.py")
# The environment variables read when the program's libraries load: a request that sets them otherwise than the
# server's start did gets a new process. The trainer's: the interpreter's, TensorFlow's, Keras', the math libraries'.
SETTINGS = {"fab": ("PYTHON",), "trainer": ("PYTHON", "TF_", "KERAS", "CUDA", "XLA", "OMP_", "MKL", "OPENBLAS", "MPL")}
RUNTIME = {"TF_CONFIG"}  # read when a strategy is made (the cluster), not when TensorFlow loads


def run_fab(args, *, cwd, env=None, timeout=300):
    """`fab ARGS` in `cwd` with environment `env` (default: this process's); a CompletedProcess with text
    stdout and stderr; subprocess.TimeoutExpired (the process killed) after `timeout` s."""
    return run("fab", [str(FAB), *map(str, args)], cwd, env, timeout)


def run_trainer(args, *, cwd, env=None, timeout=300):
    """`python -m trainer ARGS`, as run_fab runs `fab`; a new process in a test not of kind `tf`
    (tests/support/kinds.py sets `trainer_warm`): it starts no TensorFlow, and its server would."""
    return run("trainer", [sys.executable, "-m", "trainer", *map(str, args)], cwd, env, timeout, warm=trainer_warm)


trainer_warm = False


def start_trainer(args, *, cwd, env=None):
    """`python -m trainer ARGS` started, its stdout and stderr to one pipe (text), as subprocess.Popen starts it: a
    WarmProcess in a test of kind `tf`, else a subprocess.Popen."""
    argv = [sys.executable, "-m", "trainer", *map(str, args)]
    env = dict(os.environ if env is None else env)
    server = _take("trainer", env) if trainer_warm else None
    if server is None:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL)
    return WarmProcess(server, argv, cwd, env)


class WarmProcess:
    """A program started by a warm server, answering as subprocess.Popen does for what the tests ask of one: pid,
    poll, wait, communicate (the merged output), send_signal, terminate, kill, returncode, and stdout: its lines as
    they come, until it ends (`for line in proc.stdout`), or what it printed so far (`proc.stdout.read()`)."""

    def __init__(self, server, argv, cwd, env):
        self.server, self.args, self.returncode, self.output = server, argv, None, None
        self.tmp = tempfile.TemporaryDirectory(prefix="warm-process-")
        self.path = Path(self.tmp.name, "output")
        self.path.touch()
        self.stdout = _Following(self)
        server.send(argv=argv, cwd=str(cwd), env=env, stdout=str(self.path), stderr=str(self.path))
        self.pid = server.receive(30)["pid"]

    def poll(self):
        return self.returncode if self.returncode is not None else self._ended(0)

    def wait(self, timeout=None):
        if self.returncode is None and self._ended(10 ** 6 if timeout is None else timeout) is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def communicate(self, timeout=None):
        self.wait(timeout)
        return self.output, None

    def send_signal(self, sig):
        if self.returncode is None:
            os.kill(self.pid, sig)

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def _ended(self, timeout):
        try:
            self.returncode = self.server.receive(timeout)["returncode"]
        except TimeoutError:
            return None
        self.output = self.path.read_text(errors="replace")
        self.tmp.cleanup()
        _give(self.server)
        return self.returncode


class _Following:
    """A WarmProcess's output as a pipe reads: lines as they are written, the end when the process has ended."""

    def __init__(self, proc):
        self.proc, self.file = proc, open(proc.path, errors="replace")  # noqa: SIM115 - open while the process lives

    def __iter__(self):
        partial = ""
        while True:
            partial += self.file.readline()
            if partial.endswith("\n"):
                yield partial
                partial = ""
            elif self.proc.poll() is not None:
                rest = partial + self.file.read()
                yield from rest.splitlines(keepends=True)
                self.file.close()
                return
            else:
                time.sleep(0.05)

    def read(self):
        """The output not read yet: all of it once the process has ended, what it printed so far before."""
        return self.file.read()


def run(program, argv, cwd, env, timeout, warm=True):
    env = dict(os.environ if env is None else env)
    server = _take(program, env) if warm else None
    if server is None:
        return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory(prefix=f"{program}-run-") as tmp:
        out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
        server.send(argv=argv, cwd=str(cwd), env=env, stdout=str(out), stderr=str(err))
        pid = server.receive(30)["pid"]
        try:
            code = server.receive(timeout)["returncode"]
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            server.receive(30)
            _give(server)
            raise subprocess.TimeoutExpired(argv, timeout, output=out.read_text(errors="replace"),
                                            stderr=err.read_text(errors="replace")) from None
        _give(server)
        return subprocess.CompletedProcess(argv, code, out.read_text(), err.read_text())


class _Server:
    def __init__(self, program):
        self.program, self.settings = program, _settings(program, os.environ)
        self.log = tempfile.TemporaryFile()  # its own stderr (TensorFlow's lines as it loads): said if it ends
        self.proc = subprocess.Popen([sys.executable, str(SERVER), program], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log)
        self.buffer = b""

    def send(self, **request):
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()

    def receive(self, timeout):
        """The next answer; TimeoutError after `timeout` s; RuntimeError if the server is gone."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if not select.select([fd], [], [], max(left, 0))[0]:
                if left <= 0:
                    raise TimeoutError
            else:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.log.seek(0)
                    raise RuntimeError(f"the warm {self.program} server ({SERVER.name}) ended with code {self.proc.wait()}: "
                                       f"{self.log.read().decode(errors='replace')[-2000:]}")
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


_idle, _lock = [], threading.Lock()


def _settings(program, env):
    return {key: value for key, value in env.items() if key.startswith(SETTINGS[program]) and key not in RUNTIME}


def _take(program, env):
    """An idle server of `program` whose settings are the request's (started if none is), or None."""
    settings = _settings(program, env)
    with _lock:
        for server in _idle:
            if server.program == program and server.settings == settings and server.proc.poll() is None:
                _idle.remove(server)
                return server
    if settings != _settings(program, os.environ):
        return None
    server = _Server(program)
    with _lock:
        _started.append(server)
    return server


def _give(server):
    with _lock:
        _idle.append(server)


_started = []


@atexit.register
def close_all():
    """End every server started here (the session's end, and at exit); a later request starts a new one."""
    with _lock:
        servers, _started[:], _idle[:] = list(_started), [], []
    for server in servers:
        server.close()
