"""`fab ARGS` and `python -m trainer ARGS` for the tests, answering as `subprocess.run(argv, capture_output=True,
text=True)` does, from a warm fork server (tests/support/warm_server.py) instead of a new interpreter each time: the
same program, in its own process, with its own environment, folder, exit code, stdout and stderr; about 1 s of CPU
cheaper for `fab`, about 5 s for the trainer (TensorFlow and Keras loaded).

start_trainer gives a Popen-like WarmProcess to signal or to read as it prints. A test that measures how a program
itself starts uses a real process (subprocess.Popen), as do requests whose interpreter or library settings differ
from the server's.
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
# server's start did gets a new process. The trainer's: the interpreter's, TensorFlow's, Keras' (its config in HOME),
# the math and system libraries', the locale.
SETTINGS = {"fab": ("PYTHON",), "trainer": ("PYTHON", "TF_", "KERAS", "CUDA", "XLA", "OMP_", "MKL", "OPENBLAS", "MPL", "HOME",
                                            "LD_", "LANG", "LC_")}
RUNTIME = {"TF_CONFIG"}  # read when a strategy is made (the cluster), not when TensorFlow loads
IDLE = {"trainer": 2}  # servers of a program kept once idle (a trainer's holds about 600 MB; a cluster test runs two)


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


START_SECONDS = 300  # a server's start (its imports) and a fork, on a machine as busy as a test run makes it


class WarmProcess:
    """A program started by a warm server, answering as subprocess.Popen does for what the tests ask of one: pid,
    poll, wait, communicate (the output not read yet, once every process holding it has closed it, as a pipe's end),
    send_signal, terminate, kill, returncode, and stdout: its lines as they come, until that end
    (`for line in proc.stdout`), or what it printed so far (`proc.stdout.read()`)."""

    def __init__(self, server, argv, cwd, env):
        self.server, self.args, self.returncode = server, argv, None
        self.tmp = tempfile.TemporaryDirectory(prefix="warm-process-")
        self.path = Path(self.tmp.name, "output")
        self.path.touch()
        self.stdout = _Following(self)
        self.pid = server.start(argv=argv, cwd=str(cwd), env=env, stdout=str(self.path), stderr=str(self.path))

    def poll(self):
        return self.returncode if self.returncode is not None else self._ended(0)

    def wait(self, timeout=None):
        if self.returncode is None and self._ended(10 ** 6 if timeout is None else timeout) is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def communicate(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        self.wait(timeout)
        if not _closed([self.path], deadline):
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.stdout.read(), None

    def send_signal(self, sig):
        if self.poll() is None:  # (the server reaps it at once: a pid not polled for may be another process's soon)
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def _ended(self, timeout):
        try:
            self.returncode = self.server.finish(timeout)
        except TimeoutError:
            return None
        _give(self.server)
        return self.returncode


class _Following:
    """A WarmProcess's output as a pipe reads: lines as they are written, the end once the process has ended and
    nothing holds the output any longer (a process it started may write after it)."""

    def __init__(self, proc):
        self.proc, self.file = proc, open(proc.path, errors="replace")  # noqa: SIM115 - open while the process lives

    def __iter__(self):
        partial = ""
        while True:
            partial += self.file.readline()
            if partial.endswith("\n"):
                yield partial
                partial = ""
            elif self.proc.poll() is not None and _closed([self.proc.path], time.monotonic()):
                rest = partial + self.file.read()
                yield from rest.splitlines(keepends=True)
                return
            else:
                time.sleep(0.05)

    def read(self):
        """The output not read yet: to its end once the process has ended, what it printed so far before."""
        return self.file.read()


def _closed(paths, deadline):
    """Whether no process holds any of `paths` open for writing (a pipe's reader sees its end then), waiting until
    `deadline` (time.monotonic(); None: no limit)."""
    names = {str(p) for p in paths}
    while True:
        if not any(_writes(fd) for fd_dir in Path("/proc").glob("[0-9]*/fd") for fd in _fds(fd_dir) if _target(fd) in names):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _fds(fd_dir):
    try:
        return list(fd_dir.iterdir())
    except OSError:  # ended meanwhile, or not ours to read
        return []


def _target(fd):
    try:
        return os.readlink(fd)
    except OSError:
        return None


def _writes(fd):
    """Whether the open file `fd` (/proc/PID/fd/N) was opened for writing (its flags in /proc/PID/fdinfo/N)."""
    try:
        flags = next(line for line in (fd.parent.parent / "fdinfo" / fd.name).read_text().splitlines() if line.startswith("flags:"))
    except (OSError, StopIteration):
        return False
    return int(flags.split()[1], 8) & (os.O_WRONLY | os.O_RDWR) != 0


def run(program, argv, cwd, env, timeout, warm=True):
    env = dict(os.environ if env is None else env)
    server = _take(program, env) if warm else None
    if server is None:
        return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory(prefix=f"{program}-run-") as tmp:
        out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
        deadline = time.monotonic() + timeout
        pid = server.start(argv=argv, cwd=str(cwd), env=env, stdout=str(out), stderr=str(err))
        try:
            code = server.finish(timeout)
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            server.finish(30)
            _give(server)
            raise subprocess.TimeoutExpired(argv, timeout, output=out.read_text(errors="replace"),
                                            stderr=err.read_text(errors="replace")) from None
        _give(server)
        if not _closed([out, err], deadline):  # a process it started holds its output past the timeout
            raise subprocess.TimeoutExpired(argv, timeout, output=out.read_text(errors="replace"), stderr=err.read_text(errors="replace"))
        return subprocess.CompletedProcess(argv, code, out.read_text(), err.read_text())


class _Server:
    def __init__(self, program):
        self.program, self.settings, self.child = program, _settings(program, os.environ), None
        self.log = tempfile.TemporaryFile()  # its own stderr (TensorFlow's lines as it loads): said if it ends
        self.proc = subprocess.Popen([sys.executable, str(SERVER), program], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log)
        self.buffer = b""

    def start(self, **request):
        """The program started for `request`: its pid. RuntimeError, the server ended (nothing left running), when it
        has not answered within START_SECONDS."""
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        try:
            self.child = self.receive(START_SECONDS)["pid"]
        except TimeoutError:
            self.proc.kill()
            raise RuntimeError(f"the warm {self.program} server started nothing in {START_SECONDS} s; ended") from None
        return self.child

    def finish(self, timeout):
        """The started program's exit code (subprocess's convention); TimeoutError while it runs."""
        code = self.receive(timeout)["returncode"]
        self.child = None
        return code

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
        """Ended, with the program it runs (a test that left one running: nothing outlives the session)."""
        if self.child is not None:
            try:
                os.kill(self.child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
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
        spare = sum(s.program == server.program for s in _idle) >= IDLE.get(server.program, len(_started))
        if spare:
            _started.remove(server)
        else:
            _idle.append(server)
    if spare:
        server.close()


_started = []


@atexit.register
def close_all():
    """End every server started here (the session's end, and at exit); a later request starts a new one."""
    with _lock:
        servers, _started[:], _idle[:] = list(_started), [], []
    for server in servers:
        server.close()
