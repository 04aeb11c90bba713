"""`make demo` (python -m deploy.demo) leaves nothing running and sends nothing beyond 127.0.0.0/8.

strace follows every process the demo starts (the local sshd and so everything the "host" runs:
host agent, trainer, tmux, TensorBoard) and records each connect(2): the only network addresses
allowed are the loopback ones."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from deploy.demo.localhost import processes_under
from tests.support.helpers import ROOT, wait_until

pytestmark = [pytest.mark.ssh, pytest.mark.slow, pytest.mark.xdist_group("demo")]  # one demo at a time: its tmux session has one name

# 127.0.0.0/8 and ::1; and the unspecified address (0.0.0.0, ::), which connect(2) takes as this host
LOOPBACK = re.compile(r'inet_addr\("(127\.|0\.0\.0\.0")|inet_pton\(AF_INET6, "(::1|::ffff:127\.[0-9.]*|::|::ffff:0\.0\.0\.0)"')


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory):
    """One demo folder for both tests: the second run reuses the first's venv, keys and data, as a
    second `make demo` does (the first run, under strace, is a fresh one)."""
    return tmp_path_factory.mktemp("demo-home")  # no space: LocalSSHHost writes its paths into sshd_config unquoted


def demo(tmp_path, *args, trace=None):
    env = {**os.environ, "FACENET_DEMO_DIR": str(tmp_path / "demo"), "COLUMNS": "120"}
    cmd = [sys.executable, "-m", "deploy.demo", "--clips", "60", *args]
    if trace:
        cmd = ["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect", "-e", "signal=none", "-o", str(trace), *cmd]
    # SIGINT as in a terminal, whatever this pytest inherited (a background job of a non-interactive shell ignores it,
    # and Python then leaves it ignored: Ctrl-C would reach fab but not the demo)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def strace_works():
    return shutil.which("strace") and subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "true"], capture_output=True).returncode == 0


def network_connects(trace):
    """connect(2) calls to an IPv4 or IPv6 address (AF_UNIX and netlink are local by nature)."""
    return [line for line in trace.read_text().splitlines() if "connect(" in line and ("AF_INET" in line)]


def left_running(tmp_path):
    found = processes_under(tmp_path / "demo")
    sessions = subprocess.run(["tmux", "list-sessions", "-F", "#{session_name}"], capture_output=True, text=True).stdout.split()
    return found, [s for s in sessions if s.startswith("facenet-demo")]


@pytest.mark.skipif(not strace_works(), reason="strace cannot trace here (no strace, or ptrace is not permitted)")
def test_the_demo_runs_to_the_end_then_nothing_of_it_runs_and_it_only_talked_to_loopback(tmp_path, demo_home):
    trace = tmp_path / "connects.txt"
    proc = demo(demo_home, "--epochs", "2", trace=trace)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    assert "Test" in out or "test" in out  # fetch-results printed the metrics
    assert re.search(r"\nTraining time: estimated \d+ s, took \d+ s \([+-]\d+ %\)", out), out[-3000:]  # the smoke test's estimate, the run's time
    procs, sessions = left_running(demo_home)
    assert not procs and not sessions, (procs, sessions)
    connects = network_connects(trace)
    assert connects, "the trace saw no connect at all: it did not follow the demo"
    assert [line for line in connects if not LOOPBACK.search(line)] == []
    agent = (demo_home / "demo" / "host" / "runs" / ".agent" / "agent.log").read_text()
    assert "agent started" in agent  # the agent did run (and is gone now)


def test_ctrl_c_during_the_demo_stops_everything_it_started(demo_home):
    proc = demo(demo_home, "--epochs", "400")
    runs = demo_home / "demo" / "host" / "runs"
    try:
        wait_until(lambda: (runs / ".current").exists() and processes_under(runs / (runs / ".current").read_text().strip()),
                   400, "the demo's training to start")
        time.sleep(3)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out[-3000:]
    procs, sessions = left_running(demo_home)
    assert not procs and not sessions, (procs, sessions)
