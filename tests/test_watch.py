"""`fab watch` through real hosts (issue 18 "Automatic recovery", issue 19 "Recovery launches").

Real parts: `fab` as a user types it, real sshd hosts on 127.0.0.1 (one per "machine"), real tmux,
rsync and training (tiny), the real host agent, a local HTTP server recording the webhook posts.
"""

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import wait_until

pytestmark = [pytest.mark.ssh, pytest.mark.slow]


def status(env, run):
    try:
        return json.loads((env.runs / run / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def trainer_pid(env, run):
    """The trainer's pid (the python child of the launcher recorded in launch.json)."""
    launch = json.loads((env.runs / run / "launch.json").read_text())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            words = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[2]) == launch["pgid"] and b"-m" in words and b"trainer" in words:
            return int(entry.name)
    return None


def watch_until_end(env, *args, timeout=240):
    proc = env.popen("watch", *args)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except Exception:
        proc.kill()
        raise
    return proc.returncode, out


def test_watch_follows_a_run_to_its_end_and_does_not_restart_one_that_failed_on_its_own(host_ready, webhook):
    env = host_ready
    env.configure(epochs=2)
    env.write(notify={"webhook": webhook.url}, recovery={"poll_seconds": 0.5, "unreachable_minutes": 0.1})
    assert env.fab("train", "--run-name", "w1").returncode == 0
    code, out = watch_until_end(env)
    assert code == 0, out
    assert "watching run w1 on local" in out and "finished on local; exit 0" in out, out
    wait_until(lambda: "finished" in webhook.events(), 20, "the finished notification")
    time.sleep(1.5)  # the agent's next rounds: nothing sent twice
    assert sorted(webhook.events()) == ["finished", "started"], webhook.posts
    finished = next(p for p in webhook.posts if p["event"] == "finished")
    assert finished["run"] == "w1" and finished["host"] == "local" and "UAR" in finished["text"], finished
    record = json.loads((env.root / "state" / "watch" / "w1.json").read_text())
    assert record["state"] == "finished" and record["restarts"] == 0
    assert [t["to"] for t in record["transitions"]][-1] == "finished"

    # a trainer killed by the kernel (SIGKILL: exit 137, the OOM killer's signature) is not moved
    env.configure(epochs=300)
    assert env.fab("train", "--run-name", "w2").returncode == 0
    proc = env.popen("watch")
    wait_until(lambda: status(env, "w2").get("epoch", 0) >= 1, 180, "the first epoch")
    os.kill(trainer_pid(env, "w2"), signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 137, out
    assert "failed on local (exit code 137: killed by SIGKILL" in out and "is not restarted" in out, out
    wait_until(lambda: "failed" in webhook.events(), 20, "the failed notification")
    failed = [p for p in webhook.posts if p["event"] == "failed"]
    assert len(failed) == 1 and "out-of-memory" in failed[0]["text"], failed
