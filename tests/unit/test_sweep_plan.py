"""A sweep's plan, table and host queue without a host: `--set` parsed into runs NAME-<values> (the split never swept),
the table sorted by validation with the test split never choosing, and remote_scripts/sweep_queue.py's put and take
on a runs folder here (a run the host started is never taken off it)."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from deploy.errors import LocalInputError
from deploy.sweep import plan
from deploy.sweep.table import chosen, rows_of, summary_lines
from tests.support.helpers import ROOT, TINY_CONFIG, write_config


def test_the_product_of_the_sets_is_one_run_each_named_by_its_values():
    sets = plan.parse_sets(["train.learning_rate=0.001,0.0003", "model.encoder=bilstm,transformer"])
    assert sets == {"train.learning_rate": [0.001, 0.0003], "model.encoder": ["bilstm", "transformer"]}
    runs = plan.product_runs("lr", sets)
    assert [r["run"] for r in runs] == ["lr-0.001-bilstm", "lr-0.001-transformer", "lr-0.0003-bilstm", "lr-0.0003-transformer"]
    assert runs[1]["values"] == {"train.learning_rate": 0.001, "model.encoder": "transformer"}
    long = plan.product_runs("x", {"data.label_map": [{"a" * 30: 1}, {"b" * 30: 1}]})
    assert len({r["run"] for r in long}) == 2 and all(len(r["run"]) <= 42 for r in long)


@pytest.mark.parametrize(("item", "says"), [
    ("seed=1,2", "a sweep keeps one split"), ("split.test_fraction=0.1,0.2", "a sweep keeps one split"),
    ("train.epochs", "--set expects KEY=V1,V2"), ("train.epochs=5,5", "a value is given twice")])
def test_a_set_that_would_change_the_split_or_is_malformed_is_refused(item, says):
    with pytest.raises(LocalInputError, match=says):
        plan.parse_sets([item])


def test_an_unknown_key_or_a_wrong_type_is_refused_naming_the_run_before_anything_reaches_a_host(tmp_path, monkeypatch):
    monkeypatch.setenv("FACENET_STATE_DIR", str(tmp_path / "state"))
    inv = SimpleNamespace(train_config=str(write_config(tmp_path / "train.yaml", **TINY_CONFIG)))
    with pytest.raises(LocalInputError, match="run s-1: .*train.no_such_key"):
        plan.new_record(inv, "s", plan.parse_sets(["train.no_such_key=1,2"]), None, ["a"])
    record = plan.new_record(inv, "s", plan.parse_sets(["model.units=8,16"]), None, ["a"])
    assert [r["run"] for r in record["runs"]] == ["s-8", "s-16"]
    assert "units: 16" in (tmp_path / "state" / "sweeps" / "s" / "s-16.yaml").read_text()


def summary(state, validation, test, ci=(0.1, 0.9), cv=None):
    return {"state": state, "epoch": 3, "epochs": 3, "validation": validation, "test": {"uar": test, "ci95": {"uar": list(ci)}},
            "cv_mean": cv, "compute_seconds": 3600, "price_per_hour": 2.0, "launches": 1}


def test_the_table_is_sorted_by_validation_and_the_test_split_never_chooses():
    record = {"name": "s", "folds": None, "runs": [{"run": r, "values": {}} for r in ("s-1", "s-2", "s-3")],
              "queues": {"a": ["s-1", "s-2"], "b": ["s-3"]}}
    seen = {"a": {"runs": {"s-1": summary("finished", 0.50, 0.90), "s-2": summary("finished", 0.70, 0.40, (0.3, 0.5))}},
            "b": {"runs": {"s-3": summary("running", 0.80, None)}}}
    rows = rows_of(record, seen)
    assert [r["run"] for r in rows] == ["s-3", "s-2", "s-1"]
    assert chosen(rows)["run"] == "s-2"  # the best validation of the finished runs; s-1's better test is not looked at
    lines = summary_lines(rows, per_run_seconds=60)
    assert "among 2 finished of 3 configurations compared: s-2 (validation 0.700); its test UAR 0.400 [0.300, 0.500]" in lines[0]
    assert "cost so far $6.00" in lines[1]
    cv = {"a": {"runs": {"s-1": summary("finished", 0.9, None, cv={"uar": 0.3}), "s-2": summary("finished", 0.1, None, cv={"uar": 0.6})}},
          "b": {"runs": {"s-3": summary("finished", 0.5, None, cv={"uar": 0.4})}}}
    assert chosen(rows_of({**record, "folds": 3}, cv))["run"] == "s-2"  # the mean over folds, not a fold's validation
    assert rows_of(record, {"a": None, "b": seen["b"]})[1]["state"] == "unknown (host not answering)"


def queue(queue_dir, *args):
    out = subprocess.run([sys.executable, str(ROOT / "remote_scripts" / "sweep_queue.py"), args[0], str(queue_dir), *args[1:]],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_host_queue_merges_what_the_laptop_puts_and_never_gives_away_a_run_it_started(tmp_path):
    runs_dir, queue_dir = tmp_path / "runs dir", tmp_path / "runs dir" / ".sweeps" / "s"
    entry = lambda run: {"run": run, "new": ["train"], "resume": ["train", "--resume"]}  # noqa: E731
    base = {"sweep": "s", "runs_dir": str(runs_dir), "session": "test-none", "launcher": ["bash", "x", "v", "p"], "env": {}}
    assert queue(queue_dir, "put", json.dumps({**base, "entries": [entry("s-1"), entry("s-2")]}))["entries"] == ["s-1", "s-2"]
    assert queue(queue_dir, "put", json.dumps({**base, "entries": [entry("s-3"), entry("s-1")]}))["entries"] == ["s-1", "s-2", "s-3"]
    status = queue(queue_dir, "status")
    assert {r: s["state"] for r, s in status["runs"].items()} == {"s-1": "queued", "s-2": "queued", "s-3": "queued"}
    assert status["runner"]["alive"] is False
    (runs_dir / "s-1").mkdir()  # the host began it: it stays here
    (queue_dir / "runner.json").write_text(json.dumps({"started": ["s-2"]}))
    assert queue(queue_dir, "take", "s-1") == {"taken": False, "why": "its folder is here"}
    assert queue(queue_dir, "take", "s-2") == {"taken": False, "why": "started here"}
    assert queue(queue_dir, "take", "s-3") == {"taken": True}
    assert list(queue(queue_dir, "status")["runs"]) == ["s-1", "s-2"]
    bad = subprocess.run([sys.executable, str(ROOT / "remote_scripts" / "sweep_queue.py"), "put", str(queue_dir),
                          json.dumps({**base, "entries": [entry("../x")]})], capture_output=True, text=True)
    assert bad.returncode != 0 and "invalid run name" in bad.stderr


def test_fab_sweep_refuses_bad_input_before_any_host_with_exit_2(tmp_path):
    import os

    import yaml

    from tests.support.warm_runner import run_fab

    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump({"hosts": {"a": {"address": "127.0.0.1", "port": 9, "user": "nobody"}},
                                                            "train_config": str(write_config(tmp_path / "train.yaml", **TINY_CONFIG))}))
    env = {**os.environ, "FACENET_INVENTORY": str(tmp_path / "inventory.yaml"), "FACENET_STATE_DIR": str(tmp_path / "state")}

    def fab(*args):
        proc = run_fab(args, cwd=ROOT, env=env, timeout=60)
        return proc.returncode, proc.stdout + proc.stderr

    for args, says in [(("s", "--set", "seed=1,2", "--hosts", "a"), "a sweep keeps one split"),
                       (("s", "--set", "model.units=8,16", "--hosts", "a,gpu9"), "--hosts names gpu9, not in the inventory"),
                       (("s", "--set", "model.nope=1,2", "--hosts", "a"), "--set for run s-1"),
                       (("s", "--set", "model.units=8", "--folds", "1"), "--folds expects a whole number, 2 or more"),
                       (("s",), "No sweep s on this machine"),
                       (("s", "--status"), "No sweep s on this machine")]:
        code, out = fab("sweep", *args)
        assert code == 2 and says in out, (args, code, out)
    assert not (tmp_path / "state" / "sweeps" / "s").exists() or not (tmp_path / "state" / "sweeps" / "s" / "sweep.json").exists()


def test_the_runner_never_resumes_a_run_fenced_here_and_starts_or_resumes_the_others(tmp_path):
    sys.path.insert(0, str(ROOT / "remote_scripts"))
    import sweep_queue

    runs_dir = tmp_path / "runs"

    def run(name, status=None, launch=None, fence=None, exit_code=None):
        folder = runs_dir / name
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text("seed: 1\n")
        for file, data in (("status.json", status), ("launch.json", launch), ("fenced.json", fence)):
            if data is not None:
                (folder / file).write_text(json.dumps(data))
        if exit_code is not None:  # the launch's exit record, exits/<launch id>.json
            (folder / "exits").mkdir()
            (folder / "exits" / f"{launch['launch_id']}.json").write_text(json.dumps({"exit_code": exit_code}))

    gone = {"launch_id": "20261207T000000Z-1", "pid": 999999999, "pgid": 999999999}
    run("s-1", {"state": "running", "epoch": 2}, gone, {"launch_id": gone["launch_id"], "reason": "moved to b"})  # moved on
    run("s-2", {"state": "finished"}, {**gone, "launch_id": "20261207T000000Z-2"}, exit_code=0)
    run("s-3", {"state": "running", "epoch": 1}, {**gone, "launch_id": "20261207T000000Z-3"})  # vanished, not fenced
    queue = {"runs_dir": str(runs_dir), "session": "test-none", "entries": [{"run": f"s-{k}"} for k in range(1, 5)]}
    state = {"started": [], "ended": {}}
    entry, how = sweep_queue.pick(queue, state)
    assert (entry["run"], how) == ("s-3", "resume") and state["ended"] == {"s-1": "superseded", "s-2": "finished"}, state
    queue["entries"] = queue["entries"][:2] + queue["entries"][3:]
    assert [sweep_queue.pick(queue, state)[k] for k in (0, 1)] == [{"run": "s-4"}, "new"]
    assert state["started"] == ["s-3", "s-4"]


def test_the_runner_waits_while_a_fab_task_holds_the_host_lock_with_a_fresh_lease(tmp_path):
    import os

    sys.path.insert(0, str(ROOT / "remote_scripts"))
    import sweep_queue

    queue = {"runs_dir": str(tmp_path / "runs"), "session": "test-none", "entries": []}
    assert sweep_queue.host_training(queue) is None
    (tmp_path / "runs" / ".lock").mkdir(parents=True)
    (tmp_path / "runs" / ".lock" / "lease").touch()
    assert sweep_queue.host_training(queue) == "the host lock (a fab task)"
    os.utime(tmp_path / "runs" / ".lock" / "lease", (1, 1))  # a lease nobody renewed: the task died
    assert sweep_queue.host_training(queue) is None


def test_an_idle_host_takes_the_last_queued_run_of_the_busiest_host():
    from deploy.sweep.idle import balance

    def host(alive, *states, runner_state="running"):
        return {"runner": {"alive": alive, "state": runner_state}, "runs": {f"r{k}-{s}": {"state": s} for k, s in enumerate(states)}}

    seen = {"a": host(True, "running", "queued", "queued"), "b": host(False, "finished", runner_state="done"),
            "c": host(True, "running", "queued"), "d": host(False, "finished", "failed", runner_state="done"),
            "lost": host(False, runner_state="done"), "quiet": None}
    assert balance(seen, {"lost": "2026-12-07"}) == [("a", "r2-queued", "b"), ("a", "r1-queued", "d")]
    seen["b"]["runner"]["state"] = "stopped"  # a stop on request: that host waits for the user
    assert balance(seen, {})[0] == ("a", "r2-queued", "d")
    assert balance({"a": host(True, "running"), "b": host(False, runner_state="done")}, {}) == []  # nothing queued


@pytest.mark.parametrize(("item", "says"), [
    ('train.optimizer=adam,"sgd', "--set train.optimizer: '\"sgd' does not read as a value"),
    ("model.units=[8,16]", "--set model.units: '\\[8' does not read as a value"),
    ("model.units={a", "--set model.units: '{a' does not read as a value"),
    ("train.optimizer=2020-01-01,adam", "--set train.optimizer: '2020-01-01' reads as date, not a plain value"),
    ("train.learning_rate=0.1,,0.2", "--set train.learning_rate: an empty value"),
    ("train.monitor=val_uar,val_loss", "--set train.monitor: a sweep ranks its runs by validation UAR")])
def test_a_set_value_that_is_not_a_plain_value_is_refused_naming_the_set(item, says):
    with pytest.raises(LocalInputError, match=says):
        plan.parse_sets([item])


def test_the_table_ranks_by_validation_uar_whatever_the_monitor_is(tmp_path):
    sys.path.insert(0, str(ROOT / "remote_scripts"))
    import sweep_queue

    by_loss = {"best": {"metric": "val_loss", "value": 0.2}, "last": {"val_loss": 0.3, "val_uar": 0.55}}
    assert sweep_queue.validation_uar(by_loss, {}) == 0.55  # running: the last epoch's UAR, never a loss
    assert sweep_queue.validation_uar(by_loss, {"validation": {"uar": 0.61}}) == 0.61  # finished: the best model's UAR
    assert sweep_queue.validation_uar({"best": {"metric": "val_uar", "value": 0.7}, "last": {"val_uar": 0.6}}, {}) == 0.7


def test_fab_sweep_refuses_a_second_command_of_the_same_sweep_and_leaves_nothing_when_it_refuses(tmp_path, monkeypatch):
    import os

    import yaml

    from tests.support.warm_runner import run_fab

    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump({"hosts": {"a": {"address": "127.0.0.1", "port": 9, "user": "nobody"}},
                                                            "train_config": str(write_config(tmp_path / "train.yaml", **TINY_CONFIG))}))
    env = {**os.environ, "FACENET_INVENTORY": str(tmp_path / "inventory.yaml"), "FACENET_STATE_DIR": str(tmp_path / "state")}
    monkeypatch.setenv("FACENET_STATE_DIR", str(tmp_path / "state"))

    def fab(*args):
        proc = run_fab(args, cwd=ROOT, env=env, timeout=60)
        return proc.returncode, proc.stdout + proc.stderr

    with plan.held("s"):  # another `fab sweep s` at work (this process)
        code, out = fab("sweep", "s", "--set", "model.units=8,16", "--hosts", "a")
        assert code == 2 and f"Sweep s is being run by another command (pid {os.getpid()}" in out, (code, out)
        assert (tmp_path / "state" / "sweeps" / "s" / ".lock").exists()  # the holder's lock is left alone
    for args, says in [(("-x", "--set", "model.units=8"), "The sweep NAME expects letters, digits"),
                       (("s", "--set", "model.units=8", "--hosts", "a", "--launch", "1"), "--hosts a and --launch 1 are both given"),
                       (("s", "--set", "model.nope=1,2", "--hosts", "a"), "--set for run s-1")]:
        code, out = fab("sweep", *args)
        assert code == 2 and says in out, (args, code, out)
    assert not (tmp_path / "state" / "sweeps").exists() or list((tmp_path / "state" / "sweeps").iterdir()) == []


def test_a_run_name_of_another_sweep_or_already_on_a_host_is_refused_never_adopted(tmp_path, monkeypatch):
    from deploy.sweep import hosts as sweep_hosts

    monkeypatch.setenv("FACENET_STATE_DIR", str(tmp_path / "state"))
    inv = SimpleNamespace(train_config=str(write_config(tmp_path / "train.yaml", **TINY_CONFIG)))
    plan.save(plan.new_record(inv, "p", plan.parse_sets(["model.units=16", "train.learning_rate=0.1,0.01"]), None, ["a"]))
    with pytest.raises(LocalInputError, match=r"p-16-0.1 \(sweep p, "):
        plan.new_record(inv, "p-16", plan.parse_sets(["train.learning_rate=0.1"]), None, ["a"])

    class Conn:  # the host's side run here: the command as a shell would run it
        label = "a"

        def run(self, cmd, **kwargs):
            out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True)
            return SimpleNamespace(stdout=out.stdout, stderr=out.stderr, exited=out.returncode)

    runs_dir = tmp_path / "runs dir"
    (runs_dir / "q-16-0.1").mkdir(parents=True)  # made by hand, or by a sweep of another laptop
    hinv = SimpleNamespace(remote={"runs_dir": str(runs_dir)})
    assert sweep_hosts.held_runs(Conn(), hinv, ["q-16-0.1", "q-16-0.01", "it's"]) == ["q-16-0.1"]


def test_a_run_that_cannot_start_is_recorded_with_its_reason_and_the_follower_stops_after_a_few_tries(tmp_path, monkeypatch):
    import os

    sys.path.insert(0, str(ROOT / "remote_scripts"))
    import sweep_queue

    from deploy.sweep import follow

    monkeypatch.setenv("TMUX_TMPDIR", str(tmp_path))  # a tmux server of this test's own
    subprocess.run(["tmux", "new-session", "-d", "-s", "test-taken", "sleep", "60"], check=True)
    try:
        queue_dir = tmp_path / "q"
        queue_dir.mkdir()
        queue = {"runs_dir": str(tmp_path / "runs"), "session": "test-taken", "launcher": ["bash", "x", "v", "p"], "env": {}}
        state = {"started": [], "ended": {}, "stopped_here": []}
        assert sweep_queue.follow_one(str(queue_dir), queue, state, {"run": "s-1", "new": ["train"]}, "new") == 1
        runner = json.loads((queue_dir / "runner.json").read_text())
        assert runner["state"] == "failed to start" and runner["failed_starts"] == 1, runner
        assert runner["error"]["run"] == "s-1" and "duplicate session: test-taken" in runner["error"]["reason"], runner
    finally:
        subprocess.run(["tmux", "kill-server"], env={**os.environ, "TMUX_TMPDIR": str(tmp_path)}, capture_output=True)

    said, started = [], []
    monkeypatch.setattr(follow.sweep_hosts, "start_runner", lambda conn, hinv, name: started.append(name))
    monkeypatch.setattr(follow, "connect_host", lambda config, hinv, host: SimpleNamespace(conn=SimpleNamespace(close=lambda: None)))
    inv = SimpleNamespace(for_host=lambda host: None)
    follower = follow.Follower(None, inv, {"name": "s", "queues": {"a": ["s-1"]}}, lambda *a: said.append(a[0]), None)
    answer = {"runner": {**runner, "alive": False}, "runs": {"s-1": {"state": "queued"}}}
    follower.keep_runner("a", answer)
    assert started == ["s"] and "duplicate session: test-taken" in said[-1] and follower.gave_up is None, said
    answer["runner"]["failed_starts"] = follow.MAX_FAILED_STARTS
    follower.keep_runner("a", answer)
    assert started == ["s"] and follower.gave_up.startswith("a: its sweep runner failed to start s-1 3 times"), follower.gave_up
    assert "duplicate session: test-taken" in follower.gave_up


def test_a_runner_that_never_comes_up_stops_the_follower_naming_its_tmux_session(monkeypatch):
    """The runner's own tmux session name held by something else: `start_runner` sees the session and starts nothing, so
    the runner never answers alive; after MAX_FAILED_STARTS starts the follower stops (exit 1) saying where to look."""
    from deploy.sweep import follow

    said, started = [], []
    monkeypatch.setattr(follow.sweep_hosts, "start_runner", lambda conn, hinv, name: started.append(name))
    monkeypatch.setattr(follow.sweep_hosts, "runner_session", lambda hinv, name: f"facenet-sweep-{name}")
    monkeypatch.setattr(follow, "connect_host", lambda config, hinv, host: SimpleNamespace(conn=SimpleNamespace(close=lambda: None)))
    follower = follow.Follower(None, SimpleNamespace(for_host=lambda host: None), {"name": "s", "queues": {"a": ["s-1"]}},
                               lambda *a: said.append(a[0]), None)
    never = {"runner": {"alive": False}, "runs": {"s-1": {"state": "queued"}}}
    for _ in range(follow.MAX_FAILED_STARTS + 2):
        follower.keep_runner("a", never)
    assert len(started) == follow.MAX_FAILED_STARTS, started
    assert follower.gave_up and "did not come up after 3 starts" in follower.gave_up and "facenet-sweep-s" in follower.gave_up, follower.gave_up
    follower.gave_up = None
    follower.keep_runner("a", {"runner": {"alive": True}, "runs": never["runs"]})  # seen alive: the count starts again
    follower.keep_runner("a", never)
    assert len(started) == follow.MAX_FAILED_STARTS + 1 and follower.gave_up is None


def test_a_sweep_whose_runs_all_ended_launches_nothing_and_says_so(tmp_path, monkeypatch):
    from rich.console import Console

    from deploy.sweep import start

    monkeypatch.setenv("FACENET_STATE_DIR", str(tmp_path / "state"))
    inv = SimpleNamespace(train_config=str(write_config(tmp_path / "train.yaml", **TINY_CONFIG)), hosts={})
    record = plan.new_record(inv, "u", plan.parse_sets(["model.units=8,16"]), None, ["u-h1"])
    record.update(launched=["u-h1"], queues={"u-h1": ["u-8", "u-16"]}, ended={"u-8": "finished", "u-16": "finished"},
                  downed=["u-h1"])
    plan.save(record)
    monkeypatch.setattr(start, "launch_hosts", lambda *a: pytest.fail("a host launched for a sweep with nothing left"))
    monkeypatch.setattr(start, "prepare", lambda *a: pytest.fail("a host prepared for a sweep with nothing left"))
    said = []
    console = Console(record=True, width=200)
    assert start.sweep(None, inv, "u", {}, launch=1, say=lambda *a: said.append(a[0]), console=console) == 0
    assert "every run has ended" in said[0] and "2/2 finished" in console.export_text(), said


def test_without_run_storage_a_lost_hosts_runs_are_not_moved_and_the_follower_ends_with_exit_6(tmp_path, monkeypatch):
    from rich.console import Console

    from deploy.sweep import follow

    monkeypatch.setenv("FACENET_STATE_DIR", str(tmp_path / "state"))
    runs = [{"run": r, "values": {}} for r in ("s-1", "s-2", "s-3")]
    record = {"name": "s", "folds": None, "runs": runs, "queues": {"a": ["s-1", "s-2"], "b": ["s-3"]}, "lost": {},
              "launched": [], "fences": [], "moves": [], "ended": {}}
    b_done = {"runner": {"alive": False, "state": "done"}, "runs": {"s-3": {"state": "finished", "epoch": 3, "epochs": 3}}}
    monkeypatch.setattr(follow, "look", lambda config, inv, name, host: None if host == "a" else b_done)  # a: no answer
    monkeypatch.setattr(follow.Follower, "move", lambda *a: pytest.fail("a run of a host that may still train it was moved"))
    inv = SimpleNamespace(recovery={"poll_seconds": 0, "unreachable_minutes": 0}, storage={"url": None})  # no run storage
    rounds = []
    follower = follow.Follower(None, inv, record, lambda *a: rounds.append(a[0]), Console(record=True, width=200),
                               sleep=lambda s: pytest.fail(f"the follower waits on with nothing left to progress: {rounds}")
                               if len(rounds) > 50 else None)
    follower.last.update({"s-1": {"state": "running", "epoch": 1}, "s-2": {"state": "queued"}})  # as a last answered
    assert follower.loop() == 6
    said = "\n".join(rounds)
    assert "a has not answered for 0 min; without run storage its runs (s-1, s-2) are not moved" in said, said
    assert "Run `fab sweep s` again once a answers" in said and "If a is gone for good" in said, said
    assert record["queues"] == {"a": ["s-1", "s-2"], "b": ["s-3"]} and record["lost"] == {} and record["moves"] == [], record


def test_a_runner_starts_only_the_runs_claimed_for_its_host_and_waits_while_storage_cannot_say(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "remote_scripts"))
    import sweep_claims
    import sweep_queue

    claims = {"s-1": ("moved", {"host": "b", "written_at": "t"}), "s-2": ("unknown", "EndpointConnectionError: no answer")}
    monkeypatch.setattr(sweep_claims, "claim_of", lambda queue, run: claims.get(run, ("mine", {"host": "a"})))
    queue = {"runs_dir": str(tmp_path / "runs"), "session": "test-none", "host": "a", "entries": [{"run": f"s-{k}"} for k in (1, 2, 3)],
             "env": {"FACENET_STORAGE": "{}"}, "launcher": ["bash", "x", "v", "p"]}
    state = {"started": [], "ended": {}}
    assert sweep_queue.pick(queue, state) == (None, "unclaimed")  # s-2's claim unknown: never started on a guess
    assert state["moved"] == {"s-1": {"to": "b", "at": "t"}} and state["ended"] == {"s-1": "superseded"} and state["started"] == []
    assert "EndpointConnectionError" in state["waiting"]
    claims["s-2"] = ("mine", {"host": "a"})
    assert sweep_queue.pick(queue, state) == ({"run": "s-2"}, "new") and state["started"] == ["s-2"] and state["waiting"] is None
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "queue.json").write_text(json.dumps(queue))
    (tmp_path / "q" / "runner.json").write_text(json.dumps(state))
    assert sweep_queue.status(str(tmp_path / "q"))["runs"]["s-1"]["state"] == "superseded"  # moved: never "queued" here


def test_paramikos_tracebacks_of_a_host_not_answering_are_not_printed():
    code = ("import logging, deploy.host.connection; "  # as in a fab task: no logging configured, paramiko's records left over
            "logging.getLogger('paramiko.transport').error('Exception (client): Error reading SSH protocol banner')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "SSH protocol banner" not in out.stderr + out.stdout, out


def test_a_claim_is_read_back_by_the_hosts_command_and_a_run_with_only_a_claim_is_not_listed(moto_server, monkeypatch):
    import os

    from deploy.runs import storage
    from tests.support.storage_check import new_bucket
    from trainer.storage.claims import write_claim
    from trainer.storage.s3 import Store

    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(key, value)
    settings = {"url": f"s3://{new_bucket(moto_server)}/runs", "endpoint_url": moto_server, "region": "us-east-1", "host": "a"}
    store = Store.open(settings)
    write_claim(store, "s-1", "b", "s", "moved from a (lost)")

    def claim_of(run):
        out = subprocess.run([sys.executable, "-m", "trainer.storage.claims", "claim-of", run], cwd=ROOT, capture_output=True,
                             text=True, env={**os.environ, "FACENET_STORAGE": json.dumps(settings)}, timeout=60)
        return out.returncode, json.loads(out.stdout)

    code, answer = claim_of("s-1")
    assert code == 0 and answer["claim"]["host"] == "b" and answer["claim"]["why"] == "moved from a (lost)", answer
    assert claim_of("s-2") == (0, {"run": "s-2", "claim": None})
    assert storage.stored_runs(store) == []  # queued, never stored: not a run `fab runs` lists
    settings["endpoint_url"] = "http://127.0.0.1:9"  # nobody there: an error, never a claim
    code, answer = claim_of("s-1")
    assert code == 1 and "error" in answer and "claim" not in answer, answer


def lost_host_follower(tmp_path, monkeypatch, queues, pointers, last):
    """A Follower of sweep "s" with `queues` ({host: [run]}), run storage's pointers read from `pointers` (a dict the
    test may change) and `last` as its last look at the hosts; returns (follower, record)."""
    from rich.console import Console

    from deploy.sweep import follow

    monkeypatch.setenv("FACENET_STATE_DIR", str(tmp_path / "state"))
    runs = [{"run": r, "values": {}} for queue in queues.values() for r in queue]
    record = {"name": "s", "folds": None, "runs": runs, "queues": queues, "lost": {}, "launched": [], "fences": [],
              "moves": [], "ended": {}}
    monkeypatch.setattr(follow.stored, "configured", lambda inv: True)
    monkeypatch.setattr(follow.stored, "pointer", lambda inv, run: pointers.get(run))
    inv = SimpleNamespace(recovery={"poll_seconds": 0, "unreachable_minutes": 0}, storage={"url": "s3://bucket/runs"},
                          for_host=lambda host: None)
    follower = follow.Follower(None, inv, record, lambda *args: None, Console(record=True, width=200))
    follower.last.update(last)
    return follower, record


def test_a_lost_hosts_run_that_storage_says_started_there_moves_after_its_queued_runs_and_is_fenced(tmp_path, monkeypatch):
    """The follower's last look at host a came before a's first run started (a busy laptop: seen in a whole-suite run
    beside a busy loop). Run storage's pointer names a and the launch: the run counts as started there, so the run a
    had not started moves first (a runner living on must not start it) and the started one is fenced on a's return."""
    from deploy.sweep import follow

    pointers = {"s-1": {"host": "a", "launch_id": "L1", "epoch": 2, "state": "running"},
                "s-3": {"host": "b", "launch_id": "L3", "epoch": 1, "state": "running"}}
    last = {"s-1": {"state": "queued"}, "s-2": {"state": "queued"}}  # a's last answer: before s-1 started
    follower, record = lost_host_follower(tmp_path, monkeypatch, {"a": ["s-1", "s-2"], "b": ["s-3"]}, pointers, last)
    assert follower.started_on("s-1", "a") == (True, "L1")  # the launch to fence when a answers again
    assert follower.started_on("s-2", "a") == (False, None) and follower.started_on("s-3", "a") == (False, None)
    order = []
    monkeypatch.setattr(follow.Follower, "move", lambda self, *args: order.append(args) or True)
    follower.move_lost("a")
    assert order == [("s-2", "a", "b", False, None), ("s-1", "a", "b", True, "L1")], order
    assert record["queues"]["a"] == [] and "a" in record["lost"], record


def test_a_lost_hosts_run_that_starts_there_while_another_is_moved_is_fenced_on_its_return(tmp_path, monkeypatch):
    """Host a is cut off from the laptop but not from storage: its runner starts s-4 while the follower moves s-2.
    s-4 was not started when the follower looked; its move asks again, and records the fence for a's return."""
    from deploy.sweep import follow

    pointers = {}

    def put_queue(target, hinv, rec, queued, *args, **kwargs):
        if queued[0]["run"] == "s-2":  # meanwhile, on a
            pointers["s-4"] = {"host": "a", "launch_id": "L4", "epoch": 0, "state": "running"}

    last = {"s-2": {"state": "queued"}, "s-4": {"state": "queued"}}
    follower, record = lost_host_follower(tmp_path, monkeypatch, {"a": ["s-2", "s-4"], "b": ["s-3"]}, pointers, last)
    monkeypatch.setattr(follow.stored, "latest", lambda inv, run: (None, None, "nothing stored", None))
    monkeypatch.setattr(follow, "connect_host", lambda *args: SimpleNamespace(conn=SimpleNamespace(close=lambda: None)))
    monkeypatch.setattr(follow.sweep_hosts, "holds_run", lambda *args: False)
    monkeypatch.setattr(follow.sweep_hosts, "put_queue", put_queue)
    monkeypatch.setattr(follow.sweep_hosts, "start_runner", lambda *args: None)
    follower.move_lost("a")
    assert [m["run"] for m in record["moves"]] == ["s-2", "s-4"], record
    assert record["fences"] == [{"host": "a", "run": "s-4", "launch_id": "L4", "reason": "moved to b"}], record
