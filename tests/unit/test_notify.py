"""Notifications (notify.webhook) and autostop's guard, on the host agent's own code.

Real parts: the host agent's round (remote_scripts/host_agent.py poll_once) on a runs dir of this
machine, with a real process group as the training (record_launch, as launch_training.sh does) and
a local HTTP server on 127.0.0.1 that records the webhook posts. No SSH: the end-to-end tests of
`fab watch` (tests/journeys/test_watch.py) run these through real hosts.
"""

import json
import shlex
import signal
import subprocess
import sys
import time

import pytest

from tests.support.helpers import ROOT

sys.path.insert(0, str(ROOT / "remote_scripts"))
import agent_events  # noqa: E402 - the host's scripts, standard library only
import host_agent  # noqa: E402
import notify  # noqa: E402
import run_format  # noqa: E402
import run_state  # noqa: E402


def settings(url, **more):
    return {**run_format.AGENT_DEFAULTS, "metadata_url": None, "notify_webhook": url, "notify_since": 0, "host_label": "gpu1", **more}


@pytest.fixture
def training(tmp_path):
    """`start(name)`: a run dir whose launch is a live process group (a `sleep`), as launch_training.sh records it;
    `end(name, code)` ends it with that exit record."""
    runs = tmp_path / "runs"
    (runs / ".agent").mkdir(parents=True)
    procs = {}

    def start(name, **status):
        proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
        procs[name] = proc
        run_dir = runs / name
        run_dir.mkdir()
        if status:
            (run_dir / "status.json").write_text(json.dumps({"state": "running", "epochs": 5, **status}))
        run_state.record_launch(str(run_dir), proc.pid, "sleep 60")
        return run_dir

    def end(name, code, metrics=None):
        procs[name].send_signal(signal.SIGKILL)
        procs[name].wait()
        if metrics:
            (runs / name / "metrics.json").write_text(json.dumps(metrics))
        return run_state.record_exit(str(runs / name), code)

    start.runs, start.end, start.procs = runs, end, procs
    yield start
    for proc in procs.values():
        proc.kill()
        proc.wait()


METRICS = {"headline": "test", "test": {"uar": 0.612, "ci95": {"uar": [0.571, 0.650]}}, "validation": {"uar": 0.6},
           "compute": {"hours": 0.5, "price_per_hour": 1.2, "cost_usd": 0.6}}


def test_a_notification_is_slack_and_discord_json_with_the_event_as_fields_and_sent_once(tmp_path, webhook):
    record = tmp_path / "notifications.json"
    first = notify.send_once(webhook.url, str(record), "finished:r1", "finished", "finished: run r1", run="r1", host="gpu1", epoch=4)
    again = notify.send_once(webhook.url, str(record), "finished:r1", "finished", "finished: run r1", run="r1", host="gpu1")
    assert first == (True, None) and again is None
    [body] = webhook.posts
    assert body["text"] == body["content"] == "finished: run r1"  # Slack reads text, Discord content
    assert body["event"] == "finished" and body["run"] == "r1" and body["host"] == "gpu1" and body["details"] == {"epoch": 4}
    assert webhook.server.RequestHandlerClass.posts[0]["content_type"] == "application/json"
    [entry] = json.loads(record.read_text())["sent"]
    assert entry["key"] == "finished:r1" and entry["ok"] is True and entry["by"] == "agent" and entry["sent_at"]


def test_a_failed_notification_is_recorded_with_its_error_and_raises_nothing(tmp_path, webhook):
    from deploy.demo.localhost import free_port

    record = tmp_path / "notifications.json"
    ok, error = notify.send_once(f"http://127.0.0.1:{free_port()}/nobody", str(record), "k1", "started", "started")
    assert ok is False and "ConnectionRefused" in error
    webhook.answer(500)
    ok, error = notify.send_once(webhook.url, str(record), "k2", "started", "started")
    assert ok is False and error.startswith("HTTP 500")
    assert [(e["key"], e["ok"]) for e in json.loads(record.read_text())["sent"]] == [("k1", False), ("k2", False)]
    assert notify.main(["claim", str(record), "k2", "watch"]) == 0  # claimed already: the watch will not send it again


def test_the_agent_sends_started_then_finished_with_uar_and_cost_once_each(training, webhook):
    runs = training.runs
    training("r1")
    s = settings(webhook.url)
    state = {"started": time.time()}
    host_agent.poll_once(str(runs), s, state)
    host_agent.poll_once(str(runs), s, state)
    assert webhook.events() == ["started"]
    assert webhook.posts[0]["text"] == "started: run r1 on gpu1 (? epochs planned)" and webhook.posts[0]["run"] == "r1"

    training.end("r1", 0, METRICS)
    host_agent.poll_once(str(runs), s, state)
    host_agent.poll_once(str(runs), s, state)
    assert webhook.events() == ["started", "finished"]
    finished = webhook.posts[1]
    assert finished["text"] == ("finished: run r1 on gpu1: test UAR 0.612 [0.571, 0.650], cost $0.60 (0.50 h); "
                                "the host stays up: autostop is off (`fab down` or `fab autostop` stops the billing)"), finished
    assert finished["details"]["metrics"]["test"]["uar"] == 0.612
    sent = json.loads((runs / "r1" / "notifications.json").read_text())["sent"]
    assert [(e["key"], e["ok"]) for e in sent] == [("started:r1", True), ("finished:r1", True)]


def test_the_agent_sends_a_failure_with_its_reason_and_no_started_for_a_resumed_run(training, webhook):
    runs = training.runs
    training("oom", epoch=3, resumed_at="2026-11-30T10:00:00+00:00")  # resumed: it has epochs already
    s = settings(webhook.url)
    host_agent.poll_once(str(runs), s, {"started": time.time()})
    assert webhook.posts == []
    training.end("oom", 137)
    host_agent.poll_once(str(runs), s, {"started": time.time()})
    [failed] = webhook.posts
    assert failed["event"] == "failed" and failed["details"]["exit_code"] == 137
    assert failed["text"].startswith("failed: run oom on gpu1 (exit 137): killed by SIGKILL (exit 137), usually the kernel's out-of-memory"), failed


def test_an_end_before_the_webhook_was_set_is_not_announced(training, webhook):
    training("old")
    training.end("old", 0, METRICS)
    host_agent.poll_once(str(training.runs), settings(webhook.url, notify_since=time.time() + 5), {"started": time.time()})
    assert webhook.posts == []


def test_no_webhook_no_post_and_no_record(training, webhook):
    training("quiet")
    host_agent.poll_once(str(training.runs), settings(None), {"started": time.time()})
    assert webhook.posts == [] and not (training.runs / "quiet" / "notifications.json").exists()


def test_the_budget_warning_and_the_cap_are_notified_once(tmp_path, webhook):
    runs = tmp_path / "runs"
    (runs / ".agent").mkdir(parents=True)
    marker = tmp_path / "powered off"
    now = time.time()
    budget = {"deadline": now + 600, "max_hours": 2, "command": f"touch {shlex.quote(str(marker))}", "warn_seconds": 900}
    s = settings(webhook.url, budget=budget)
    (runs / ".agent" / "settings.json").write_text(json.dumps(s))  # notify() reads the agent's settings
    host_agent.poll_once(str(runs), s, {"started": now})
    host_agent.poll_once(str(runs), s, {"started": now})
    assert webhook.events() == ["budget-warning"] and "in about 10 min" in webhook.posts[0]["text"]
    s = settings(webhook.url, budget={**budget, "deadline": now - 1})
    (runs / ".agent" / "settings.json").write_text(json.dumps(s))
    host_agent.poll_once(str(runs), s, {"started": now})
    assert marker.exists() and webhook.events() == ["budget-warning", "budget-cap"]


# --- autostop's guard ------------------------------------------------------------------------

def armed(url, marker, **more):
    return settings(url, autostop={"idle_seconds": 0, "command": f"touch {shlex.quote(str(marker))}", "wait_for": [], "armed_at": 0},
                    **more)


def test_autostop_holds_back_while_a_poweroff_would_delete_an_unfetched_run_then_fires_once_fetched(training, webhook, tmp_path):
    runs = training.runs
    marker = tmp_path / "powered off"
    training("r1")
    record = training.end("r1", 0, METRICS)
    s = armed(webhook.url, marker, shutdown_terminates=True)
    (runs / ".agent" / "settings.json").write_text(json.dumps(s))
    state = {"started": 0}
    host_agent.poll_once(str(runs), s, state)
    host_agent.poll_once(str(runs), s, state)
    assert not marker.exists(), "autostop fired although the run was neither fetched nor stored"
    assert state["autostop"]["held"].startswith("run r1 ended and is neither fetched since nor stored")
    assert "held back" in (runs / ".agent" / "agent.log").read_text()
    assert [e for e in webhook.events() if e.startswith("autostop")] == ["autostop-held"]  # said once

    agent_events.record_fetch(str(runs), "r1", "finished", record["ended_at"])  # what `fab fetch-results` leaves on the host
    host_agent.poll_once(str(runs), s, state)
    assert marker.exists() and state["autostop_held"] is None
    assert webhook.events()[-1] == "autostop" and webhook.posts[-1]["text"].startswith("autostop fired: idle since")


def test_autostop_holds_back_on_a_spot_instance_and_not_on_a_host_that_only_stops(training, tmp_path):
    runs = training.runs
    training("r1")
    training.end("r1", 0)
    spot, stops = tmp_path / "spot fired", tmp_path / "stop fired"
    url = "http://127.0.0.1:9"  # what the metadata service said a moment ago (probe_instance asks again only later)

    def seen(spot):
        return {"started": 0, "instance_url": url, "metadata_explicit": True, "metadata_probe": "on", "instance_checked": time.time(),
                "instance": {"ec2": True, "instance_type": "g5.xlarge", "spot": spot}}

    state = seen(spot=True)
    host_agent.poll_once(str(runs), armed(None, spot, metadata_url=url, metadata_explicit=True), state)
    assert not spot.exists() and "it is a spot instance" in state["autostop_held"]
    host_agent.poll_once(str(runs), armed(None, stops, metadata_url=url, metadata_explicit=True), seen(spot=False))
    assert stops.exists()  # on-demand, its shutdown stops it: the disk and its run stay


def test_a_fetch_from_before_the_run_ended_does_not_count(training, tmp_path):
    runs = training.runs
    marker = tmp_path / "powered off"
    training("r1")
    agent_events.record_fetch(str(runs), "r1", "running", None)  # fetched while it ran
    training.end("r1", 0)
    host_agent.poll_once(str(runs), armed(None, marker, shutdown_terminates=True), {"started": 0})
    assert not marker.exists()


def test_a_run_whose_end_its_uploader_stored_lets_autostop_fire(training, tmp_path):
    runs = training.runs
    marker = tmp_path / "powered off"
    run_dir = training("r1")
    training.end("r1", 0)
    launch_id = json.loads((run_dir / "launch.json").read_text())["launch_id"]
    uploader = {"launch_id": "an-earlier-launch", "state": "final", "done": True, "stored": {"epoch": 5, "state": "finished", "final": True}}
    (run_dir / "storage.json").write_text(json.dumps(uploader))  # another launch's end: not this one's
    s = armed(None, marker, shutdown_terminates=True)
    host_agent.poll_once(str(runs), s, {"started": 0})
    assert not marker.exists()
    (run_dir / "storage.json").write_text(json.dumps({**uploader, "launch_id": launch_id}))  # trainer/storage/uploader.py's record
    host_agent.poll_once(str(runs), s, {"started": 0})
    assert marker.exists()


def waits(marker, idle_seconds, done_seconds):
    return {"idle_seconds": idle_seconds, "command": f"touch {shlex.quote(str(marker))}", "wait_for": [], "armed_at": 0,
            "done_seconds": done_seconds}


def store_end(run_dir):
    """What trainer/storage/uploader.py leaves once it stored this launch's end."""
    launch_id = json.loads((run_dir / "launch.json").read_text())["launch_id"]
    (run_dir / "storage.json").write_text(json.dumps({"launch_id": launch_id, "state": "final", "done": True,
                                                      "stored": {"epoch": 5, "state": "finished", "final": True}}))


@pytest.mark.parametrize("safe", ["stored", "fetched"])
def test_once_a_finished_runs_end_is_stored_or_fetched_autostop_waits_only_its_short_grace(training, webhook, tmp_path, safe):
    runs = training.runs
    marker = tmp_path / "powered off"
    run_dir = training("r1")
    s = settings(webhook.url, autostop=waits(marker, idle_seconds=3600, done_seconds=1.5))
    if safe == "stored":
        (run_dir / "storage.json").write_text(json.dumps({"launch_id": json.loads((run_dir / "launch.json").read_text())["launch_id"],
                                                          "state": "uploading", "stored": {"epoch": 4, "final": False}}))
    state = {"started": time.time()}
    host_agent.poll_once(str(runs), s, state)
    record = training.end("r1", 0, METRICS)
    before = time.time()
    host_agent.poll_once(str(runs), s, state)
    after = time.time()
    assert not marker.exists() and state["done"] is None  # ended, but neither stored nor fetched: the full idle wait
    assert state["autostop"]["why"] == "60 idle minutes"
    finished = webhook.posts[-1]["text"]
    if safe == "stored":  # its uploader is at work: the short grace after the end is stored
        expected = {f"the host powers off at {agent_events.clock(t + 1.5, t)} "
                    "(autostop: about 0.025 idle minutes after its end is stored, if still idle)" for t in (before, after)}
    else:  # no storage: the full idle wait, until a fetch
        expected = {f"the host powers off at {agent_events.clock(state['autostop']['fires_at_epoch'], t)} "
                    "(autostop: 60 idle minutes, if still idle; a fetch brings it to 0.025 idle minutes after)" for t in (before, after)}
    assert finished.startswith("finished: run r1") and any(finished.endswith(e) for e in expected), finished

    if safe == "stored":
        store_end(run_dir)
    else:
        agent_events.record_fetch(str(runs), "r1", "finished", record["ended_at"])
    host_agent.poll_once(str(runs), s, state)
    assert state["done"]["run"] == "r1" and state["done"]["how"] == safe and not marker.exists()  # the grace: someone may look
    assert state["autostop"]["why"] == f"run r1 finished, its end {safe}: 0.025 idle minutes"
    deadline = time.time() + 10
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.3)
        host_agent.poll_once(str(runs), s, state)
    assert marker.exists(), "the host was not powered off after the short grace"
    assert time.time() - state["done"]["since"] >= 1.5


def test_a_stopped_run_and_a_person_at_work_keep_the_full_idle_wait(training, tmp_path):
    runs = training.runs
    marker = tmp_path / "powered off"
    run_dir = training("r1")
    training.end("r1", run_state.STOPPED)
    store_end(run_dir)
    s = settings(None, autostop=waits(marker, idle_seconds=3600, done_seconds=0.5))
    state = {"started": time.time()}
    for _ in range(3):
        host_agent.poll_once(str(runs), s, state)
        time.sleep(0.4)
    assert state["done"] is None and not marker.exists()  # stopped on request: the user's to continue here

    run_dir2 = training("r2")
    training.end("r2", 0)
    store_end(run_dir2)
    heartbeat = runs / ".agent" / "heartbeat"
    for _ in range(4):  # a fab task at work touches the heartbeat: the grace counts from its last beat
        heartbeat.touch()
        host_agent.poll_once(str(runs), s, state)
        time.sleep(0.3)
    assert state["done"]["run"] == "r2" and not marker.exists()
    time.sleep(0.6)
    host_agent.poll_once(str(runs), s, state)
    assert marker.exists()


def test_a_vanished_run_neither_fetched_nor_stored_holds_autostop_back_like_an_ended_one(training, tmp_path):
    runs = training.runs
    marker = tmp_path / "powered off"
    run_dir = training("r1", epoch=3)
    training.procs["r1"].kill()  # its processes are gone and no exit record was written: vanished (a reboot, a kill -9 of the group)
    training.procs["r1"].wait()
    s = armed(None, marker, shutdown_terminates=True)
    state = {"started": 0}
    host_agent.poll_once(str(runs), s, state)
    assert not marker.exists(), "autostop powered off a host whose vanished run was neither fetched nor stored"
    assert state["autostop_held"].startswith("run r1 vanished (no exit record, no process left) and is neither fetched since nor stored")

    time.sleep(1.1)  # fetched_at has one-second resolution: a fetch after the run's last change
    agent_events.record_fetch(str(runs), "r1", "vanished", None)  # what `fab fetch-results` leaves for a run without an exit record
    host_agent.poll_once(str(runs), s, state)
    assert marker.exists() and state["autostop_held"] is None
    assert not (run_dir / "exit.json").exists()


def test_a_vanished_run_whose_uploader_stored_its_end_lets_autostop_fire(training, tmp_path):
    marker = tmp_path / "powered off"
    run_dir = training("r1", epoch=3)
    training.procs["r1"].kill()
    training.procs["r1"].wait()
    launch_id = json.loads((run_dir / "launch.json").read_text())["launch_id"]
    (run_dir / "storage.json").write_text(json.dumps({"launch_id": launch_id, "state": "final", "done": True,
                                                      "stored": {"epoch": 3, "state": "vanished", "final": True}}))
    host_agent.poll_once(str(training.runs), armed(None, marker, shutdown_terminates=True), {"started": 0})
    assert marker.exists()


# --- a slow webhook holds nothing up ---------------------------------------------------------

@pytest.fixture
def dripping_hook():
    """A webhook on 127.0.0.1 that accepts the POST, then sends one header line every 0.5 s for 30 s (never ending its
    answer): each read is quick, the whole answer never comes. `.url`; `.arrivals` is [time.monotonic() of each request];
    `.on_request` a callable run as each request arrives (what was true then)."""
    import socket
    import threading

    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)

    class Hook:
        url = f"http://127.0.0.1:{srv.getsockname()[1]}/hook"
        arrivals, seen = [], []
        on_request = staticmethod(lambda: None)

    def drip(conn):
        with conn:
            conn.recv(65536)
            Hook.arrivals.append(time.monotonic())
            Hook.seen.append(Hook.on_request())
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            for i in range(60):
                time.sleep(0.5)
                try:
                    conn.sendall(b"X-Drip-%d: y\r\n" % i)
                except OSError:
                    return

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield Hook
    srv.close()


def test_a_post_has_a_total_deadline_however_the_webhook_drips(dripping_hook):
    t0 = time.monotonic()
    ok, error = notify.post(dripping_hook.url, {"text": "x"}, timeout=2)
    took = time.monotonic() - t0
    assert not ok and "TimeoutError" in error and "in all" in error, error
    assert dripping_hook.arrivals and took < 3.5, f"notify.post took {took:.1f} s with a 2 s deadline"


def test_a_spot_notice_stops_the_training_before_the_webhook_is_told(training, dripping_hook, monkeypatch):
    run_dir = training("r1", epoch=2)
    proc = training.procs["r1"]
    dripping_hook.on_request = lambda: proc.poll() is None  # was the training still running when the POST came?
    monkeypatch.setattr(notify, "TIMEOUT_SECONDS", 2)
    notice = {"action": "terminate", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 120))}
    s = settings(dripping_hook.url, session="no-such-session", spot_grace_seconds=5)
    t0 = time.monotonic()
    host_agent.preempt(str(training.runs), s, ("r1", str(run_dir)), notice)
    took = time.monotonic() - t0
    assert proc.poll() is not None
    assert dripping_hook.seen == [False], "the preempted notification was posted while the training still ran"
    assert took < 15, f"preempt took {took:.1f} s"  # the stop (a sleep ends at SIGTERM), one bounded POST, the storage wait (10 s floor)
    sent = json.loads((run_dir / "notifications.json").read_text())["sent"]
    assert [(e["event"], e["ok"]) for e in sent] == [("preempted", False)] and "TimeoutError" in sent[0]["error"]


def test_the_budget_cap_stops_the_training_then_notifies_then_powers_off(training, dripping_hook, tmp_path, monkeypatch):
    runs = training.runs
    marker = tmp_path / "powered off"
    training("capped", epoch=1)
    proc = training.procs["capped"]
    dripping_hook.on_request = lambda: (proc.poll() is None, marker.exists())
    monkeypatch.setattr(notify, "TIMEOUT_SECONDS", 2)
    budget = {"deadline": time.time() - 1, "max_hours": 1, "command": f"touch {shlex.quote(str(marker))}", "warn_seconds": 900}
    s = settings(dripping_hook.url, budget=budget, session="no-such-session", spot_grace_seconds=5)
    (runs / ".agent" / "settings.json").write_text(json.dumps(s))  # notify() reads the agent's settings
    t0 = time.monotonic()
    host_agent.poll_once(str(runs), s, {"started": time.time()})
    assert marker.exists() and proc.poll() is not None
    assert dripping_hook.seen == [(False, False)], "budget-cap: the POST must come after the stop and before the poweroff"
    assert time.monotonic() - t0 < 10


def test_the_agents_settings_holding_the_webhook_url_are_readable_by_their_user_alone(tmp_path):
    import stat

    from deploy.demo.localhost import end_host_processes

    runs = tmp_path / "runs"
    runs.mkdir()
    try:
        outcome = host_agent.configure(str(runs), {"notify_webhook": "http://127.0.0.1:9/T000/B000/secret"})
        assert outcome["ok"], outcome
        mode = stat.S_IMODE((runs / ".agent" / "settings.json").stat().st_mode)
        assert mode & 0o077 == 0, f"settings.json is {oct(mode)}: the webhook URL (a secret) is readable by others"
        host_agent.configure(str(runs), {"stall_seconds": 600})  # rewritten: still its user's alone
        assert stat.S_IMODE((runs / ".agent" / "settings.json").stat().st_mode) & 0o077 == 0
    finally:
        end_host_processes(tmp_path)


def test_the_finished_notification_never_promises_a_poweroff_that_autostop_holds_back(training, webhook, tmp_path):
    runs = training.runs
    marker = tmp_path / "powered off"
    training("r1")
    s = settings(webhook.url, autostop=waits(marker, idle_seconds=0.5, done_seconds=0.2), shutdown_terminates=True)
    state = {"started": time.time()}
    host_agent.poll_once(str(runs), s, state)
    training.end("r1", 0, METRICS)
    host_agent.poll_once(str(runs), s, state)
    finished = webhook.posts[-1]["text"]
    assert finished.endswith("; autostop waits until the run is fetched or stored: a poweroff deletes this host"), finished
    assert state["poweroff"]["at"] is None and not marker.exists()


def test_a_worker_of_a_cluster_gets_the_short_wait_once_its_part_ended(training, tmp_path):
    runs = training.runs
    marker = tmp_path / "powered off"
    training("w1", distribution={"chief": False, "worker": 1})  # the chief holds the result and stores it
    training.end("w1", 0)
    state = {"started": time.time()}
    host_agent.poll_once(str(runs), settings(None, autostop=waits(marker, idle_seconds=3600, done_seconds=0.3)), state)
    assert state["done"]["how"] == "kept by the chief (a worker of a cluster)"
    assert state["autostop"]["fires_at_epoch"] < time.time() + 60
