"""The suite's own guard (tests/support/leftovers.py): a process a test leaves running fails the session, is named, and is
ended, also when pytest is interrupted (SIGTERM, Ctrl-C). Each case runs a small pytest session of its own."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1] / "support"  # leftovers.py, loaded by the inner pytest as a plugin

LEAKY = '''
import subprocess, sys, time
def test_leaks(tmp_path):
    subprocess.Popen(["sleep", "3{marker}"], start_new_session=True)     # detached: this session's token in its env
    subprocess.Popen(["env", "-i", sys.executable, "-c", "import time; time.sleep(4{marker})", str(tmp_path)],
                     start_new_session=True)  # no token (as a login on a test host): the path on its command line
    time.sleep({nap})
'''


def session(tmp_path, marker, nap=0):
    (tmp_path / "test_inner.py").write_text(LEAKY.format(marker=marker, nap=nap))
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    env.pop("FACENET_TEST_SESSION", None)
    return subprocess.Popen([sys.executable, "-m", "pytest", "-p", "leftovers", "-p", "no:cacheprovider", "-q", "-c", os.devnull,
                             "--rootdir", str(tmp_path), "--basetemp", str(tmp_path / "base"), str(tmp_path / "test_inner.py")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=_default_sigint)


def _default_sigint():
    """Ctrl-C as a terminal gives it: a make started in the background of a script (CI, nohup) ignores SIGINT, its
    children inherit that, and a Python started with SIGINT ignored keeps ignoring it (no KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def sleepers(marker):
    out = subprocess.run(["pgrep", "-f", f"sleep[ (][34]{marker}"], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in out]


def test_a_process_left_running_fails_the_session_is_named_and_is_ended(tmp_path):
    marker = str(time.time_ns())[-9:]
    proc = session(tmp_path, marker)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    assert "left running by the suite" in out and f"sleep 3{marker}" in out and f"time.sleep(4{marker})" in out, out
    assert sleepers(marker) == [], out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_session_ends_what_it_started(tmp_path, sig):
    marker = str(time.time_ns())[-9:]
    proc = session(tmp_path, marker, nap=600)
    deadline = time.monotonic() + 60
    while len(sleepers(marker)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(sleepers(marker)) == 2
    os.kill(proc.pid, sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0, out
    assert f"sleep 3{marker}" in out and f"time.sleep(4{marker})" in out, out
    assert sleepers(marker) == [], out


TMUX = '''
import subprocess
def test_tmux(tmp_path):
    subprocess.run(["tmux", "new-session", "-d", "-s", "ours", "sleep 300; : '" + str(tmp_path) + "'"], check=True)
'''


def test_a_tmux_session_of_the_suite_is_ended_and_one_it_did_not_start_is_left_alone(tmp_path):
    """Only sessions whose command names the suite's temp folder: another checkout's `test-...` session, or the user's own
    session on a tmux server a test started, is not the suite's to end."""
    private = tmp_path / "tmux"
    private.mkdir()
    env = {**os.environ, "PYTHONPATH": str(HERE), "TMUX_TMPDIR": str(private)}
    env.pop("FACENET_TEST_SESSION", None)
    subprocess.run(["tmux", "new-session", "-d", "-s", "test-other", "sleep 300"], env=env, check=True)
    try:
        (tmp_path / "test_inner.py").write_text(TMUX)
        proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "leftovers", "-p", "no:cacheprovider", "-q", "-c", os.devnull,
                               "--rootdir", str(tmp_path), "--basetemp", str(tmp_path / "base"), str(tmp_path / "test_inner.py")],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and "tmux session ours" in proc.stdout, proc.stdout
        sessions = subprocess.run(["tmux", "list-sessions", "-F", "#{session_name}"], env=env, capture_output=True, text=True).stdout
        assert sessions.split() == ["test-other"], sessions
    finally:
        subprocess.run(["tmux", "kill-server"], env=env, capture_output=True)
