"""END_STEP (deploy/host/steps.py), the host's side of Ctrl-C, run by a real bash against real process groups here: it
ends the step's group and says so only when that was not a plain SIGTERM (fab prints what it says)."""

import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

from deploy.host.steps import END_STEP, step_env


def start_step(token, body):
    """A step as sshd starts one: a shell leading a session (and process group) of its own, marked by step_env, and
    reaped the moment it ends, as sshd reaps it (a zombie would keep its group alive for `kill -0`)."""
    step = subprocess.Popen(["bash", "-c", step_env(token) + body], start_new_session=True, stdin=subprocess.DEVNULL)
    threading.Thread(target=step.wait, daemon=True).start()
    return step


def end_step_here(token):
    out = subprocess.run(["bash", "-c", END_STEP.format(token=token)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out
    return out.stdout.strip()


def wait_marked(token, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if f"FACENET_STEP={token}:".encode() in Path(f"/proc/{pid}/environ").read_bytes():
                    return
            except OSError:
                pass
        time.sleep(0.05)
    raise AssertionError("the step's processes never started")


def test_a_step_is_ended_quietly_one_that_ignores_sigterm_is_killed_and_said_and_a_gone_one_is_said():
    token = uuid.uuid4().hex[:16]
    step = start_step(token, "sleep 300 & wait")
    wait_marked(token)
    assert end_step_here(token) == ""
    assert step.wait(10) != 0

    token = uuid.uuid4().hex[:16]
    step = start_step(token, "trap '' TERM; sleep 300 & wait; sleep 300")  # the shell and its sleep ignore SIGTERM
    wait_marked(token)
    t0 = time.monotonic()
    said = end_step_here(token)
    assert said == f"the step's process group {step.pid} was killed: it outlived SIGTERM by 5 s", said
    assert time.monotonic() - t0 >= 4.5 and step.wait(10) == -9

    assert end_step_here(uuid.uuid4().hex[:16]) == "no process of the step was found on the host"
