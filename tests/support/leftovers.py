"""The suite leaves nothing running: at its end (also after Ctrl-C or a SIGTERM of pytest) every process it
started that is still alive is named, ended, and fails the session.

What counts as started by the suite, found from the kernel (/proc), not from a list kept by the tests:
- a process whose environment holds this session's FACENET_TEST_SESSION token (set here, inherited by every
  process the tests start: fab, trainers, sshd, moto, agents started on a local "host" by a test itself);
- a process whose command line names a path under the session's temp folder (what a test host's SSH login
  started: sshd gives a login a fresh environment); a process of yours that names one (a `tail -f` of a test's
  log while the suite runs) is taken for the suite's too;
- a tmux session whose command names a path under the session's temp folder (a test host's training or
  TensorBoard), on this user's default tmux server. A tmux server is never ended itself: it may hold the
  user's own sessions, and it exits by itself once it has none.

Checked on the pytest process that runs the session (under pytest-xdist, the controller, after its workers
have ended): pytest_sessionfinish is `trylast`, after xdist's own, which ends the workers.
"""

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

TOKEN = "FACENET_TEST_SESSION"
GRACE_SECONDS = 3  # a process already ending (its test's teardown signalled it) is given this long


def pytest_configure(config):
    if hasattr(config, "workerinput"):
        return  # a pytest-xdist worker: the controller checks the whole run
    os.environ[TOKEN] = f"{os.getpid()}-{time.time_ns()}"
    config.stash[_started] = time.time()
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _interrupt)  # a SIGTERM of pytest ends the session as Ctrl-C does: teardowns, then the check


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"pytest received signal {signum}")


_started = pytest.StashKey[float]()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if hasattr(config, "workerinput") or _started not in config.stash:
        return
    # pytest's own temp folder of this session (pytest-xdist gives each worker a folder inside it); the factory
    # is set on the config by pytest's tmp_path plugin, the only place that knows the folder it numbered
    factory = getattr(config, "_tmp_path_factory", None)
    root = factory.getbasetemp() if factory is not None else None
    sessions = suite_tmux_sessions(root) if root else []
    for name in sessions:
        subprocess.run(["tmux", "kill-session", "-t", f"={name}"], capture_output=True)
    survivors = _wait_out(lambda: suite_processes(os.environ[TOKEN], root), GRACE_SECONDS)
    if not survivors and not sessions:
        return
    _end(survivors)
    lines = [f"  pid {pid}: {text[:200]}" for pid, text in sorted(survivors.items())] + [f"  tmux session {s}" for s in sessions]
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    message = f"{len(lines)} process(es) or tmux session(s) started by the suite outlived it (now ended):\n" + "\n".join(lines)
    if reporter is not None:
        reporter.write_sep("=", "left running by the suite", red=True)
        reporter.write_line(message)
    else:
        print(message)
    if session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def suite_processes(token, root):
    """{pid: command line} of live processes started by the suite: its `token` in their environment, or a path under
    `root` on their command line; this process, its ancestors and every tmux server left out."""
    mine = _ancestors()
    needle = token.encode()
    under = str(Path(root).resolve()) if root else None
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine or not _alive(int(entry.name)):
            continue
        try:
            if (entry / "comm").read_text().startswith("tmux"):
                continue
            words = [w.decode(errors="replace") for w in (entry / "cmdline").read_bytes().split(b"\0") if w]
            if (under and any(_names_path_under(w, under) for w in words)) or needle in _environ(entry):
                found[int(entry.name)] = " ".join(words) or f"[{(entry / 'comm').read_text().strip()}]"
        except OSError:
            continue
    return found


def _names_path_under(word, root):
    """`word` (one argument) is `root` or a path inside it, or holds one after a separator (`--out=/tmp/...`)."""
    at = word.find(root)
    return at >= 0 and (at == 0 or word[at - 1] in "=:'\" ") and word[at + len(root):at + len(root) + 1] in ("", "/")


def suite_tmux_sessions(root):
    """This user's default tmux server's sessions whose command names a path under `root` (a test host's training or
    TensorBoard, started by `fab` over a test sshd)."""
    out = subprocess.run(["tmux", "list-panes", "-a", "-F", "#{session_name}\t#{pane_start_command}"], capture_output=True, text=True)
    if out.returncode != 0:
        return []
    under = str(Path(root).resolve())
    names = []
    for line in out.stdout.splitlines():
        name, _, command = line.partition("\t")
        if any(_names_path_under(w, under) for w in _words(command)) and name not in names:
            names.append(name)
    return names


def _words(command):
    """The words of a pane's start command as tmux shows it (the shell command, quoted once more by tmux)."""
    try:
        return [word for outer in shlex.split(command) for word in shlex.split(outer)]
    except ValueError:
        return command.split()


def _environ(entry):
    try:
        return (entry / "environ").read_bytes()
    except OSError:  # another user's process (read as a non-root user): its command line decides
        return b""


def _ancestors():
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_out(scan, seconds):
    """What `scan` still finds after `seconds` (a process already ending is let end)."""
    deadline = time.monotonic() + seconds
    found = scan()
    while found and time.monotonic() < deadline:
        time.sleep(0.2)
        found = scan()
    return found


def _end(procs, timeout=10):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in procs:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_alive(pid) for pid in procs):
            time.sleep(0.1)
