"""The suite leaves nothing running: at its end (also after Ctrl-C or a SIGTERM of pytest) every process it
started that is still alive is named, ended, and fails the session.

What counts as started by the suite, found from the kernel (/proc), not from a list kept by the tests:
- a process whose environment holds this session's FACENET_TEST_SESSION token (set here, inherited by every
  process the tests start: fab, trainers, sshd, moto, agents started on a local "host" by a test itself);
- a process whose command line names a path under the session's temp folder (what a test host's SSH login
  started: sshd gives a login a fresh environment);
- a tmux server started during the session that serves one of those, ended with it; on a tmux server that
  ran before the session (the user's own), only the sessions named `test-...` created during it.

Checked on the pytest process that runs the session (under pytest-xdist, the controller, after its workers
have ended): pytest_sessionfinish is `trylast`, after xdist's own, which ends the workers.
"""

import os
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
    config.stash[_tmux_before] = set(_tmux_servers())
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _interrupt)  # a SIGTERM of pytest ends the session as Ctrl-C does: teardowns, then the check


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"pytest received signal {signum}")


_started = pytest.StashKey[float]()
_tmux_before = pytest.StashKey[set]()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if hasattr(config, "workerinput") or _started not in config.stash:
        return
    # pytest's own temp folder of this session (pytest-xdist gives each worker a folder inside it); the factory
    # is set on the config by pytest's tmp_path plugin, the only place that knows the folder it numbered
    factory = getattr(config, "_tmp_path_factory", None)
    root = factory.getbasetemp() if factory is not None else None
    survivors = _wait_out(lambda: suite_processes(os.environ[TOKEN], root, config.stash[_tmux_before]), GRACE_SECONDS)
    sessions = test_tmux_sessions(config.stash[_started])
    if not survivors and not sessions:
        return
    for name in sessions:
        subprocess.run(["tmux", "kill-session", "-t", f"={name}"], capture_output=True)
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


def suite_processes(token, root, tmux_before=()):
    """{pid: command line} of live processes started by the suite: its `token` in their environment, or a path under
    `root` on their command line; this process and its ancestors excluded, and tmux servers that ran before."""
    mine = _ancestors()
    needle = token.encode()
    under = str(Path(root).resolve()) if root else None
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine or not _alive(int(entry.name)):
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            text = " ".join(w.decode(errors="replace") for w in cmdline.split(b"\0") if w)
            if int(entry.name) in tmux_before:
                continue
            if (under and under in text) or needle in _environ(entry):
                found[int(entry.name)] = text or f"[{(entry / 'comm').read_text().strip()}]"
        except OSError:
            continue
    return found


def test_tmux_sessions(since):
    """Names of this user's default tmux server's sessions named test-... that were created after `since`."""
    out = subprocess.run(["tmux", "list-sessions", "-F", "#{session_created} #{session_name}"], capture_output=True, text=True)
    if out.returncode != 0:
        return []
    names = []
    for line in out.stdout.splitlines():
        created, _, name = line.partition(" ")
        if name.startswith("test-") and created.isdigit() and int(created) >= int(since):
            names.append(name)
    return names


test_tmux_sessions.__test__ = False  # a helper, not a test


def _environ(entry):
    try:
        return (entry / "environ").read_bytes()
    except OSError:  # another user's process (read as a non-root user): its command line decides
        return b""


def _tmux_servers():
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().startswith("tmux"):
                yield int(entry.name)
        except OSError:
            continue


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
