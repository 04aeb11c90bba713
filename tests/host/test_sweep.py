"""`fab sweep` over two local SSH hosts (tests/support/sweep_hosts.py: a real sshd, folders and tmux server each) with the
stand-in trainer (the sweep is the process around trainings: queues, states, exit records, moves; no number of a
training is read here), and `fab compare` on two of its runs still on their hosts.

Each test's fault comes at a seeded random moment (SEED): after a drawn number of epochs of the run it hits.
"""

import json
import random

import pytest

from tests.support.helpers import output_of, read_status, wait_until
from tests.support.sweep_hosts import SweepHosts, exit_codes, history_epochs, launches_overlapping

pytestmark = [pytest.mark.ssh]

SEED = 32
SETS = ("--set", "train.learning_rate=0.001,0.0003", "--set", "model.units=8,16")
RUNS = ["lr-0.001-8", "lr-0.001-16", "lr-0.0003-8", "lr-0.0003-16"]  # the product, in order; a takes the 1st and 3rd


def status_epoch(run_dir):
    try:
        return json.loads((run_dir / "status.json").read_text()).get("epoch") or 0
    except (OSError, ValueError):
        return 0


def trainer_pid(run_dir):
    """The pid of the run's trainer (`python -m trainer`, in its launch's process group; not its uploader)."""
    from pathlib import Path

    pgid = json.loads((run_dir / "launch.json").read_text())["pgid"]
    for entry in Path("/proc").iterdir():
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
            if entry.name.isdigit() and b"trainer" in words and words[words.index(b"trainer") - 1] == b"-m":
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                    return int(entry.name)
        except (OSError, ValueError, IndexError):
            continue
    return None


def holders(hosts, run):
    return [name for name in ("a", "b") if (hosts.runs(name) / run / "config.yaml").exists()]


def test_a_sweep_left_to_its_hosts_goes_on_and_run_again_after_a_crash_trains_nothing_twice(standin_venv, tmp_path):
    epochs = 6
    hosts = SweepHosts(tmp_path, standin_venv, epochs)
    rng = random.Random(SEED)
    try:
        started = hosts.env.fab("sweep", "lr", *SETS, "--hosts", "a,b", "--detach")  # the laptop closed from the start
        assert started.returncode == 0, started.out
        assert "estimate: 4 configurations x 9 s each" in started.out and "about $0.01 at $1.5/h" in started.out, started.out
        first, second = hosts.runs("a") / RUNS[0], hosts.runs("a") / RUNS[2]
        wait_until(lambda: (first / "metrics.json").exists(), 120, f"{RUNS[0]} to finish on a")
        at = rng.randint(1, epochs - 1)
        wait_until(lambda: status_epoch(second) >= at, 120, f"{RUNS[2]} at epoch {at} on a")
        hosts.crash("a")  # host a loses its runner and its training at once (a power loss): its run vanished
        wait_until(lambda: all((hosts.runs("b") / run / "metrics.json").exists() for run in (RUNS[1], RUNS[3])), 120,
                   "host b to train its whole queue with no laptop")

        again = hosts.env.fab("sweep", "lr", timeout=300)
        assert again.returncode == 0, again.out
        for run in RUNS:
            assert len(holders(hosts, run)) == 1, (run, holders(hosts, run))
            run_dir = hosts.runs(holders(hosts, run)[0]) / run
            assert history_epochs(run_dir) == list(range(epochs)), (run, history_epochs(run_dir))
            assert (run_dir / "metrics.json").exists() and (run_dir / "test_predictions.json").exists(), run
        assert exit_codes(first) == [0], "a finished run is never launched again"
        assert exit_codes(second)[-1] == 0 and len(exit_codes(second)) == 1, exit_codes(second)  # the killed launch left none
        launches = json.loads((second / "launch.json").read_text())
        assert "--resume" in launches["command"], launches  # continued from its backup, not started again
        for run in (RUNS[1], RUNS[3]):
            assert exit_codes(hosts.runs("b") / run) == [0], run
        for name in ("a", "b"):  # one training per host at a time
            assert launches_overlapping(hosts.runs(name)) == [], name

        table = hosts.env.fab("sweep", "lr", "--status")
        assert table.returncode == 0, table.out
        assert "among 4 finished of 4 configurations compared" in table.out and "4/4 finished" in table.out, table.out
        assert all(run in table.out for run in RUNS), table.out

        # fab compare on two runs still on their hosts (no storage, nothing fetched): only their predictions come over
        compared = hosts.env.fab("compare", RUNS[0], RUNS[1], "--dest", str(tmp_path / "results"))
        assert compared.returncode == 0, compared.out
        assert "its test predictions fetched from a" in compared.out and "fetched from b" in compared.out, compared.out
        # what the comparison says is the real trainer's to show (tests/trainer/test_test_predictions.py): the stand-in's
        # predictions are made up; here, that it was written where --dest says
        assert len(list((tmp_path / "results").rglob("compare-*.json"))) == 1, compared.out
        assert not (tmp_path / "results" / "b" / RUNS[1] / "history.csv").exists()
    finally:
        hosts.close()


def test_a_sweep_of_four_over_two_hosts_finishes_every_configuration_once_when_a_host_is_lost(aws, standin_venv, tmp_path):
    epochs = 6
    hosts = SweepHosts(tmp_path, standin_venv, epochs, moto_url=aws)
    at = random.Random(SEED + 1).randint(1, epochs - 2)  # stored epochs of a's first run when a is lost
    try:
        follow = hosts.env.popen("sweep", "lr", *SETS, "--hosts", "a,b")
        wait_until(lambda: ((hosts.latest(RUNS[0]) or {}).get("epoch") or 0) >= at, 120, f"{RUNS[0]}'s epoch {at} stored from a")
        hosts.terminate("a")
        out = output_of(follow, 400, hosts.state)
        assert follow.returncode == 0, out
        assert "a has not answered for 0.1 min: lost" in out and f"{RUNS[0]}: moved from a to b, from stored epoch" in out, out
        assert f"{RUNS[2]}: moved from a to b" in out, out  # queued on a, never started there: a new run on b
        stored_end = lambda run: (hosts.latest(run) or {}).get("final")  # noqa: E731 - the uploader stores the end after it
        wait_until(lambda: all(stored_end(run) for run in RUNS), 60, "every run's end stored")
        for run in RUNS:
            pointer = hosts.latest(run)
            assert pointer["state"] == "finished" and pointer["final"] and pointer["host"] == "b", (run, pointer)
            run_dir = hosts.runs("b") / run
            assert history_epochs(run_dir) == list(range(epochs)), (run, history_epochs(run_dir))  # every epoch once
            assert exit_codes(run_dir) == [0], (run, exit_codes(run_dir))  # one launch on b, which finished it
        assert launches_overlapping(hosts.runs("b")) == []  # b trained its own runs and a's one at a time
        resumed = json.loads((hosts.runs("b") / RUNS[0] / "launch.json").read_text())
        assert "--resume" in resumed["command"], resumed  # continued from storage's epoch, not trained again
        record = json.loads((hosts.root / "state" / "sweeps" / "lr" / "sweep.json").read_text())
        assert [m["run"] for m in record["moves"]] == [RUNS[2], RUNS[0]] and list(record["lost"]) == ["a"], record  # queued first

        again = hosts.env.fab("sweep", "lr", timeout=300)  # run again with a gone: nothing left to train, nothing trained
        assert again.returncode == 0 and "among 4 finished of 4 configurations compared" in again.out, again.out
        assert all(exit_codes(hosts.runs("b") / run) == [0] for run in RUNS), again.out
    finally:
        hosts.close()


def test_a_host_that_stops_answering_but_lives_on_trains_no_run_moved_off_it(aws, standin_venv, tmp_path):
    """Host a's sshd stopped (SIGSTOP: a hung network), its runner and uploader living on: with run storage, the follower
    moves a's runs to b and rewrites their claims; a's runner fences its launch of the run it trains and never starts the
    run still queued on it. Every configuration finishes once, across both hosts. a's trainer is paused while the
    follower decides (SIGSTOP: of it alone, as tmux continues a stopped pane), so that it cannot finish first, whatever the machine's speed."""
    import os
    import signal

    epochs = 6
    hosts = SweepHosts(tmp_path, standin_venv, epochs, moto_url=aws)
    at = random.Random(SEED + 2).randint(1, epochs - 2)
    sshd, paused = hosts.sshd["a"].proc.pid, None
    try:
        follow = hosts.env.popen("sweep", "lr", *SETS, "--hosts", "a,b")
        first = hosts.runs("a") / RUNS[0]
        # paused on the host's own progress, not the store's: the uploader runs at nice 10, and on a busy machine it stored
        # epoch 2 once the trainer was past its last epoch, which then finished before the fence (exit 0 on a and on b)
        paused = wait_until(lambda: (read_status(first).get("epoch") or 0) >= at and trainer_pid(first), 120, f"{RUNS[0]}'s epoch {at} on a")
        os.kill(paused, signal.SIGSTOP)
        # paused before its last epoch's end: the fence is asked at every epoch end and once after the last (run._fit)
        assert (read_status(first).get("epoch") or 0) < epochs, read_status(first)
        wait_until(lambda: ((hosts.latest(RUNS[0]) or {}).get("epoch") or 0) >= 1, 120, f"{RUNS[0]}'s epoch 1 stored from a")
        os.kill(sshd, signal.SIGSTOP)  # a answers no new connection; its runner and uploader go on
        wait_until(lambda: (first / "fenced.json").exists(), 180, f"a's runner to fence {RUNS[0]} once it is claimed by b")
        os.kill(paused, signal.SIGCONT)
        runner = hosts.runs("a") / ".sweeps" / "lr" / "runner.json"
        wait_until(lambda: json.loads(runner.read_text()).get("state") == "done", 120, "a's runner to end its queue")
        out = output_of(follow, 400, hosts.state)
        assert follow.returncode == 0, out
        assert "a has not answered for 0.1 min: lost" in out and f"{RUNS[2]}: moved from a to b" in out, out
        assert "Traceback" not in out and "SSH protocol banner" not in out, out  # paramiko's logging stays quiet
        for run in RUNS:  # every configuration trained to its end once, across both hosts
            codes = [c for name in ("a", "b") if (hosts.runs(name) / run / "exits").is_dir() for c in exit_codes(hosts.runs(name) / run)]
            assert codes.count(0) == 1, (run, codes)
            assert exit_codes(hosts.runs("b") / run)[-1] == 0, run
        assert exit_codes(first) == [5], exit_codes(first)  # fenced on a: stopped at its epoch end, no result (SUPERSEDED)
        assert not (hosts.runs("a") / RUNS[2]).exists()  # queued on a when it was moved: never started there
        assert json.loads(runner.read_text())["moved"][RUNS[2]]["to"] == "b"
        assert "--resume" in json.loads((hosts.runs("b") / RUNS[0] / "launch.json").read_text())["command"]
    finally:
        os.kill(sshd, signal.SIGCONT)
        if paused:
            try:
                os.kill(paused, signal.SIGCONT)
            except ProcessLookupError:
                pass
        hosts.close()


def test_a_launched_host_keeps_a_stop_and_is_downed_once_its_runs_are_stored(aws, standin_venv, tmp_path):
    from tests.support.sweep_hosts import LaunchedHost
    from tests.support.two_hosts import instances

    host = LaunchedHost(tmp_path, standin_venv, 4, aws)
    try:
        follow = host.env.popen("sweep", "u", "--set", "model.units=8,16", "--launch", "1")
        wait_until(lambda: status_epoch(host.env.runs / "u-8") >= 1, 300, "u-8's first epoch on the launched host")
        stop = host.env.fab("-H", "u-h1", "stop")  # the user's stop: the sweep does not undo it
        assert stop.returncode == 0, stop.out
        out, _ = follow.communicate(timeout=300)
        assert follow.returncode == 3 and "`fab sweep u` continues the sweep" in out, out
        assert "fab -H u-h1 provision sync-code sync-data" in out, out  # a launched host is provisioned first
        assert out.index("estimate: 2 configurations") < out.index("u-8 on u-h1: "), out
        assert instances()["u-h1"]["State"]["Name"] == "running" and exit_codes(host.env.runs / "u-8") == [3]

        swept = host.env.fab("sweep", "u", timeout=600)  # again: the stopped run resumed, then the next, then the host downed
        assert swept.returncode == 0, swept.out
        assert "u-h1 terminated (fab down, recovery.down_when_done): its runs are stored or fetched" in swept.out, swept.out
        assert instances()["u-h1"]["State"]["Name"] in ("shutting-down", "terminated")
        assert exit_codes(host.env.runs / "u-8") == [3, 0] and exit_codes(host.env.runs / "u-16") == [0]
        for run in ("u-8", "u-16"):
            assert history_epochs(host.env.runs / run) == [0, 1, 2, 3], run
    finally:
        host.close()


@pytest.mark.tf
@pytest.mark.slow
def test_a_cross_validation_sweep_trains_each_configuration_s_folds_and_ranks_by_their_mean(host_venv, tmp_path):
    """`--folds 2` with the real trainer (a cross-validation is `python -m trainer cv`, which the stand-in does not replace):
    each configuration is one cross-validation run on its host with both folds finished, and the table ranks the
    configurations by the CV mean over folds, the number it reads from each run's own result."""
    hosts = SweepHosts(tmp_path, host_venv, 1)
    try:
        done = hosts.env.fab("sweep", "cv", "--set", "train.learning_rate=0.01,0.0001", "--hosts", "a,b", "--folds", "2", timeout=900)
        assert done.returncode == 0, done.out
        text = " ".join(done.out.split())
        assert "sorted by the CV mean UAR over folds" in text and "CV mean UAR" in text and "validation UAR" not in text, done.out
        assert "chosen by the CV mean UAR among 2 finished of 2 configurations compared" in text and "its test UAR" not in text, done.out
        for host, run in (("a", "cv-0.01"), ("b", "cv-0.0001")):  # the product's order, one per host
            run_dir = hosts.runs(host) / run
            assert all((run_dir / f"fold-{k}" / "metrics.json").is_file() for k in (1, 2)), sorted(p.name for p in run_dir.iterdir())
            mean = json.loads((run_dir / "cv.json").read_text())["mean"]["uar"]
            assert f"{mean:.3f}" in done.out, (run, mean, done.out)  # the number the table ranks by
        status = hosts.env.fab("sweep", "cv", "--status")
        rows = [line for line in status.out.splitlines() if "│ cv-0.0" in line]
        assert len(rows) == 2 and all("finished" in row for row in rows), status.out
    finally:
        hosts.close()
