"""The host agent (remote_scripts/host_agent.py) knows what keeps the host busy and outlives a full
disk; it asks EC2's metadata service only where that makes sense (issues 16 items 3, 4, 6; 22).

Real parts: `fab` against real sshd hosts on 127.0.0.1, the real agent process, a real tmpfs for
the full disk (as root), a real `ssh -tt` login, real sockets standing in for the metadata
service. What cannot run here: cron itself and nvidia-smi (fake programs on the host's PATH),
a poweroff (autostop's command writes a file).
"""

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.support.deploy_env import make_ready
from tests.support.helpers import ROOT, fill_disk, mount_tmpfs, wait_until
from tests.support.host_fakes import FAKE_CRONTAB

sys.path.insert(0, str(ROOT / "remote_scripts"))
import host_activity  # noqa: E402 - the host's own module, stdlib only

pytestmark = [pytest.mark.ssh, pytest.mark.slow]
AGENT = ROOT / "remote_scripts" / "host_agent.py"


def agent_state(runs):
    try:
        return json.loads((runs / ".agent" / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def armed_host(fake_bin_host, fired, wait_for=(), **fake_programs):
    """A host with a fake crontab (the real user's table stays untouched), code synced, and an
    inventory whose autostop command writes `fired`."""
    env = fake_bin_host(crontab=FAKE_CRONTAB, **fake_programs)
    env.write(autostop={"command": f"touch {shlex.quote(str(fired))}", "wait_for": list(wait_for)},
              ec2={"poll_seconds": 0.3, "metadata_url": None})
    return env


def arm(env, idle_s):
    armed = env.fab("autostop", "--idle-minutes", idle_s / 60)
    assert armed.returncode == 0, armed.out
    return armed


@pytest.fixture
def local_agent(tmp_path):
    """`start(runs, **settings)`: the real agent process on a runs dir of this machine, with these
    settings (no SSH, no `configure`: nothing touches a crontab)."""
    started = []

    def start(runs, **settings):
        (runs / ".agent").mkdir(parents=True, exist_ok=True)
        (runs / ".agent" / "settings.json").write_text(json.dumps(settings))
        out = open(tmp_path / f"agent {len(started)}.out", "w")
        started.append(subprocess.Popen([sys.executable, str(AGENT), "run", str(runs)], stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL))
        return started[-1]

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(10)


# 3. a fab task is activity from its first command to its end ---------------------------------------

def test_autostop_waits_while_a_slow_sync_data_runs_and_fires_after_it(fake_bin_host, tmp_path):
    fired = tmp_path / "powered off"
    env = make_ready(armed_host(fake_bin_host, fired), tmp_path)
    env.env["FACENET_TASK_BEAT_SECONDS"] = "1"
    size_kb = sum(f.stat().st_size for f in env.data.rglob("*") if f.is_file()) / 1024
    env.write(rsync_args=[f"--bwlimit={int(size_kb / 15)}"])  # about 15 s of upload
    shutil.rmtree(env.remote_root / "data dir")
    idle_s = 4.8
    arm(env, idle_s)
    started = time.time()
    sync = env.popen("sync-data")
    heartbeat, beats = env.runs / ".agent" / "heartbeat", set()
    while sync.poll() is None:
        assert not fired.exists(), f"autostop fired {time.time() - started:.1f} s into sync-data"
        beats.add(int(heartbeat.stat().st_mtime))
        time.sleep(0.3)
    ended = time.time()
    assert sync.returncode == 0, sync.stdout.read()
    assert ended - started > 3 * idle_s  # the upload outlasted the idle time by far
    assert len(beats) >= 5, beats  # the heartbeat was touched while rsync ran, not only by the first command
    wait_until(fired.exists, idle_s + 15, "autostop to fire once the task had ended")
    assert fired.stat().st_mtime - ended >= idle_s - 1.5


def test_a_held_lock_is_activity_while_its_lease_is_fresh_and_not_once_its_task_died(tmp_path, local_agent):
    runs, fired = tmp_path / "runs", tmp_path / "fired"
    lock = runs / ".lock"
    lock.mkdir(parents=True)
    (lock / "holder.json").write_text(json.dumps({"task": "sync-data", "by": "me@laptop", "pid": 1, "lease_seconds": 3}))
    (lock / "lease").touch()
    local_agent(runs, poll_seconds=0.2, metadata_url=None,
                autostop={"idle_seconds": 1, "command": f"touch {shlex.quote(str(fired))}", "wait_for": [], "armed_at": time.time()})
    for _ in range(12):  # the task renews its lease for 4 s, four times the idle time
        (lock / "lease").touch()
        time.sleep(0.33)
        assert not fired.exists()
    assert "fab sync-data holds the host lock" in agent_state(runs)["activity"][0]
    died = (lock / "lease").stat().st_mtime  # its laptop closed: the lock stays, its lease is no longer renewed after this
    wait_until(fired.exists, 10, "autostop to fire once the lease was stale")
    assert fired.stat().st_mtime - died >= 3 + 1 - 0.5 and lock.is_dir()


# 4. a full disk, and cron bringing the agent back --------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs. Ask for it before fake_bin_host: pytest then stops the host's agent first."""
    disk = mount_tmpfs(tmp_path / "small disk", "2m")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_the_agent_survives_a_full_disk_fires_and_writes_its_state_again_once_there_is_room(small_disk, fake_bin_host, tmp_path):
    fired = tmp_path / "powered off"
    env = armed_host(fake_bin_host, fired)
    env.write(remote={**env.inventory["remote"], "runs_dir": str(small_disk / "runs")})
    assert env.fab("sync-code").returncode == 0
    idle_s = 6
    arm(env, idle_s)
    pid = wait_until(env.agent_pid, 10, "the agent")
    fill_disk(small_disk / "filler")
    polled = agent_state(env.runs).get("polled_at")
    wait_until(fired.exists, idle_s + 15, "autostop to fire on the full disk")
    time.sleep(1)
    os.kill(pid, 0)  # alive
    assert agent_state(env.runs).get("polled_at") == polled  # it could not write its state: the disk was full
    assert not (env.runs / ".agent" / "fired.json").exists()
    (small_disk / "filler").unlink()
    wait_until(lambda: agent_state(env.runs).get("polled_at") != polled, 10, "the state written again")
    record = wait_until(lambda: agent_state(env.runs).get("fired_saved") and
                        json.loads((env.runs / ".agent" / "fired.json").read_text()), 10, "the autostop record")
    assert record["exit_code"] == 0 and str(fired) in record["command"]
    assert agent_state(env.runs)["pid"] == pid
    assert not [p.name for p in (env.runs / ".agent").iterdir() if p.name.endswith(".tmp")]  # no torn temp file holds space


def test_cron_starts_the_agent_again_every_minute_and_never_a_second_one(fake_bin_host, tmp_path):
    env = armed_host(fake_bin_host, tmp_path / "powered off")
    assert env.fab("sync-code").returncode == 0
    armed = arm(env, 30 * 60)
    assert "restarted within a minute if it stops" in armed.out, armed.out
    table = (env.fake_bin / "crontab.txt").read_text().splitlines()
    minutely = [line for line in table if line.startswith("* * * * * ")]
    assert len(minutely) == 1 and [line for line in table if line.startswith("@reboot ")], table
    assert minutely[0].removeprefix("* * * * * ") == next(x for x in table if x.startswith("@reboot ")).removeprefix("@reboot ")

    pid = wait_until(env.agent_pid, 10, "the agent")
    state = agent_state(env.runs)  # the inventory's `ec2: {metadata_url: null}`: nothing is sent
    assert state["metadata_probe"] == "off" and state["metadata_requests"] == 0 and state["metadata_urls"] == [], state
    os.kill(pid, signal.SIGKILL)  # the agent dies (a bug, the OOM killer)
    wait_until(lambda: subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0, 10, "the agent to end")
    for _ in range(2):  # two minutes of cron: the second run finds it running
        subprocess.run(["sh", "-c", minutely[0].removeprefix("* * * * * ")], check=True, timeout=30)
        wait_until(lambda: env.agent_pid() not in (None, pid), 10, "the agent started again by cron")
        time.sleep(0.5)
    agents = subprocess.run(["pgrep", "-f", f"host_agent.py run {env.runs}"], capture_output=True, text=True).stdout.split()
    assert agents == [str(env.agent_pid())], agents

    assert env.fab("autostop", "--cancel").returncode == 0
    assert "host_agent.py" not in (env.fake_bin / "crontab.txt").read_text()


# 6. idle means no fab task, no SSH login, no process on the GPU -----------------------------------

@pytest.mark.xdist_group("ssh_login")  # its login is activity for every host agent here: not beside a test that waits for autostop
def test_an_open_ssh_login_keeps_the_host_up(fake_bin_host, tmp_path):
    if host_activity.ssh_sessions():
        pytest.skip(f"an interactive SSH login is open on this machine ({host_activity.ssh_sessions()}): it counts as "
                    "activity, so autostop could not be seen firing after the test's own login closes")
    fired = tmp_path / "powered off"
    env = armed_host(fake_bin_host, fired, wait_for=["ssh"])
    assert env.fab("sync-code").returncode == 0
    host = env.inventory["hosts"]["local"]
    login = subprocess.Popen(["ssh", "-tt", "-p", str(host["port"]), "-i", host["key_file"], "-o", "BatchMode=yes",
                              "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                              f"{host['user']}@127.0.0.1", "sleep 120"],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        idle_s = 3
        arm(env, idle_s)
        time.sleep(2 * idle_s + 1)
        assert not fired.exists(), "autostop fired under an open SSH login"
        seen = [a for a in agent_state(env.runs)["activity"] if "ssh session open" in a]
        assert seen and f"{host['user']} on pts/" in seen[0], agent_state(env.runs)
        monitor = env.fab("monitor")
        assert "if still idle; waiting: ssh session open" in monitor.out, monitor.out
    finally:
        login.terminate()
        login.wait(10)
    closed = time.time()
    wait_until(fired.exists, idle_s + 10, "autostop to fire once the login closed")
    assert fired.stat().st_mtime - closed >= idle_s - 1.5


FAKE_NVIDIA_SMI = """#!/bin/sh
# the compute apps are the pids in gpu-apps.txt beside this script
case "$*" in
  *--query-compute-apps=pid*) cat "$(dirname "$0")/gpu-apps.txt" 2>/dev/null ;;
  *) echo "NVIDIA Fake GPU, 0, 10, 81559" ;;
esac
"""


def test_a_process_on_the_gpu_keeps_the_host_up(fake_bin_host, tmp_path):
    fired = tmp_path / "powered off"
    env = armed_host(fake_bin_host, fired, wait_for=["gpu"], nvidia_smi=FAKE_NVIDIA_SMI)
    (env.fake_bin / "gpu-apps.txt").write_text("4242\n")
    assert env.fab("sync-code").returncode == 0
    idle_s = 3
    arm(env, idle_s)
    time.sleep(2 * idle_s + 1)
    assert not fired.exists(), "autostop fired under a process on the GPU"
    assert agent_state(env.runs)["activity"] == ["GPU in use by pid 4242"]
    monitor = env.fab("monitor")
    assert "waiting: GPU in use by pid 4242" in monitor.out, monitor.out
    (env.fake_bin / "gpu-apps.txt").unlink()
    freed = time.time()
    wait_until(fired.exists, idle_s + 10, "autostop to fire once the GPU was free")
    assert fired.stat().st_mtime - freed >= idle_s - 1.5


# the metadata probe ---------------------------------------------------------------------

def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ec2s_default_address_is_given_up_for_good_after_a_refused_connection(tmp_path, local_agent):
    """As the agent treats EC2's own address when the inventory did not name it (metadata_explicit false)."""
    runs, url = tmp_path / "runs", f"http://127.0.0.1:{closed_port()}"
    settings = {"metadata_url": url, "metadata_explicit": False, "poll_seconds": 0.2, "metadata_recheck_seconds": 0.2}
    first = local_agent(runs, **settings)
    state = wait_until(lambda: agent_state(runs).get("metadata_probe", "").startswith("stopped") and agent_state(runs), 10,
                       "the probe to stop")
    assert "not EC2" in state["metadata_probe"] and "ConnectionRefused" in state["metadata_probe"], state
    time.sleep(1.5)  # seven more rounds
    first.terminate()
    first.wait(10)
    local_agent(runs, **settings)  # a restart (cron, reboot) does not ask again
    wait_until(lambda: agent_state(runs).get("pid") not in (None, first.pid), 10, "the second agent")
    time.sleep(1.5)
    state = agent_state(runs)
    assert state["metadata_requests"] == 1 and state["metadata_urls"] == [f"{url}/latest/api/token"], state
    assert state["metadata_probe"].startswith("stopped: not EC2")


def test_ec2s_default_address_is_given_up_after_three_requests_without_an_answer(tmp_path, local_agent):
    silent = socket.socket()  # accepts connections (the kernel's backlog) and never answers, as a dropped packet
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        runs, url = tmp_path / "runs", f"http://127.0.0.1:{silent.getsockname()[1]}"
        local_agent(runs, metadata_url=url, metadata_explicit=False, poll_seconds=0.2, metadata_recheck_seconds=0.2)
        state = wait_until(lambda: agent_state(runs).get("metadata_probe", "").startswith("stopped") and agent_state(runs), 20,
                           "the probe to stop")
        assert "3 tries without an answer" in state["metadata_probe"], state
        time.sleep(1.5)
        assert agent_state(runs)["metadata_requests"] == 3
    finally:
        silent.close()


def test_a_metadata_url_the_inventory_names_is_asked_again(tmp_path, local_agent):
    runs = tmp_path / "runs"
    local_agent(runs, metadata_url=f"http://127.0.0.1:{closed_port()}", metadata_explicit=True, poll_seconds=0.2,
                metadata_recheck_seconds=0.2)
    wait_until(lambda: agent_state(runs).get("metadata_requests", 0) >= 3, 10, "three requests")
    assert agent_state(runs)["metadata_probe"] == "on"


def test_an_agent_started_a_moment_before_the_host_is_ended_is_ended_with_it(tmp_path):
    """`configure` returns once its agent is up (its pid reported), and ending a local host scans again until
    nothing is left: an agent started just before the scan (its command line still empty mid-exec) was missed
    and ran on after its test (16 of 30 tries under a busy core)."""
    import host_agent

    from deploy.demo.localhost import end_host_processes, processes_under

    for i in range(5):
        root = tmp_path / f"host {i}"
        runs = root / "runs"
        runs.mkdir(parents=True)
        first = host_agent.configure(str(runs), {"stall_seconds": 600})
        assert first["started"] and agent_state(runs)["pid"] == first["agent_pid"], first
        again = host_agent.configure(str(runs), {"stall_seconds": 700})  # one agent a runs dir: none started
        assert not again["started"] and again["agent_pid"] is None, again
        ended = end_host_processes(root, timeout=5)
        assert any(str(first["agent_pid"]) in line for line in ended), ended
        assert processes_under(root) == {}
