"""`fab ARGS` for the tests, answering as `subprocess.run([fab, ...], capture_output=True, text=True)` does,
from a warm fork server (tests/support/fab_server.py) instead of a new interpreter each time: the same `fab` program,
in its own process, with its own environment, exit code, stdout and stderr, about 1 s of CPU cheaper.

A test that signals `fab`, reads its output as it comes, or measures how `fab` itself starts uses a real
process (subprocess.Popen of FAB), as do requests whose PYTHON* settings differ from the server's.
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
SERVER = Path(__file__).with_name("fab_server.py")


def run_fab(args, *, cwd, env=None, timeout=300):
    """`fab ARGS` in `cwd` with environment `env` (default: this process's); a CompletedProcess with text
    stdout and stderr; subprocess.TimeoutExpired (the process killed) after `timeout` s."""
    argv = [str(FAB), *map(str, args)]
    env = dict(os.environ if env is None else env)
    server = _take(env)
    if server is None:
        return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory(prefix="fab-run-") as tmp:
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
    def __init__(self):
        self.python_env = _python_settings(os.environ)
        self.proc = subprocess.Popen([sys.executable, str(SERVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
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
            if left <= 0:
                raise TimeoutError
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"the fab server (tests/support/fab_server.py) ended with code {self.proc.wait()}")
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


_idle, _lock = [], threading.Lock()


def _python_settings(env):
    return {key: value for key, value in env.items() if key.startswith("PYTHON")}


def _take(env):
    """An idle server whose interpreter settings are the request's (started if none is), or None."""
    settings = _python_settings(env)
    with _lock:
        for server in _idle:
            if server.python_env == settings and server.proc.poll() is None:
                _idle.remove(server)
                return server
    if settings != _python_settings(os.environ):
        return None
    server = _Server()
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
