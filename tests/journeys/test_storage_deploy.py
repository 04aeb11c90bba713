"""Runs outlive their hosts: run storage and `fab watch` end to end, with `fab` against real sshd hosts, real tmux
and rsync, moto's S3 on 127.0.0.1 as the store (inventory storage.endpoint_url: the laptop's environment names
no S3 endpoint) and moto's EC2 for the launches, a local HTTP server recording the webhook posts.

One set-up for the module (tests/support/two_hosts.py, launched): host a, a spot instance `fab launch` made, is
deployed to and trains run e2e with storage on (credentials: laptop, moto's test keys) while `fab watch` watches
it; once epoch 3 is stored, host a is terminated (its sshd and every connection killed, every process of it ended,
its folders deleted). Then, with host a still gone and before the watch gives it up: `fab runs` and `fab
fetch-results --run e2e` (from storage, and it says so). The watch finds a unreachable, launches e2e-r1, and
continues the run there from storage (`deploy-full --resume-from s3://.../e2e`) to its end. The tests only read
what that left, except the last, which trains a second run on e2e-r1 against a store that refuses its keys.
"""

import json
import urllib.request

import pytest

from tests.support.aws import DLAMI_PARAMETER, moto_ami, seed_public_parameter
from tests.support.helpers import TINY_CONFIG, wait_until, write_config
from tests.support.storage_check import check_pointers_came_last, client, refusing_unknown_keys
from tests.support.two_hosts import TwoHosts, history_epochs, instances
from tests.support.webhook import serve

pytestmark = [pytest.mark.ssh, pytest.mark.slow]
EPOCHS = 30  # room for the kill after epoch 3 is stored, before the end, even when storage lags (12 was not: on a busy
# machine the uploader stored epoch 2, then 12, the last, before the kill)
RUN, REPLACEMENT = "e2e", "e2e-r1"


def storage_record(runs, run):
    try:
        return json.loads((runs / run / "storage.json").read_text())
    except (OSError, ValueError):
        return {}


def screen(out):
    """The text without its panel borders and the watch's indent of a task's output, whitespace collapsed (rich wraps
    long lines)."""
    return " ".join(out.replace("│", " ").replace("  | ", " ").split())


@pytest.fixture(scope="module")
def stored(tmp_path_factory, smoke_standin_venv, moto_server):
    with pytest.MonkeyPatch.context() as mp, serve() as webhook:
        urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"), timeout=10).read()
        for key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL"):
            mp.delenv(key, raising=False)
        # EC2 and SSM (fab launch, the watch's launch) find moto by boto3's per-service variables; S3 only through
        # the inventory's storage.endpoint_url
        mp.setenv("AWS_ENDPOINT_URL_EC2", moto_server)
        mp.setenv("AWS_ENDPOINT_URL_SSM", moto_server)
        tmp = tmp_path_factory.mktemp("storage")
        mp.setenv("AWS_CONFIG_FILE", str(tmp / "no aws config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp / "no aws credentials"))
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        seed_public_parameter("us-east-1", DLAMI_PARAMETER, moto_ami("us-east-1"))
        # the real trainer; deploy-full's smoke tests, of which nothing is checked here, are the stand-in's
        two = TwoHosts(tmp, smoke_standin_venv, moto_server, webhook, EPOCHS, launched=True)
        env = two.env
        # room for `fab runs` and fetch-results after the loss, before the watch gives host a up
        env.write(recovery={**env.inventory["recovery"], "unreachable_minutes": 0.5})
        watch = None
        try:
            address = two.launch_a()
            deploy = env.fab("-H", "a", "deploy-full", "--run-name", RUN, timeout=600)
            assert deploy.returncode == 0, deploy.out
            watch = env.popen("watch")
            wait_until(lambda: (two.latest(RUN) or {}).get("epoch", 0) >= 3, 240, "epoch 3 stored")
            two.terminate("a")
            s3 = client(moto_server)
            at_loss = json.loads(s3.get_object(Bucket=two.bucket, Key=f"runs/{RUN}/LATEST")["Body"].read())
            runs = env.fab("runs")
            fetched = env.fab("-H", "a", "fetch-results", "--run", RUN, "--dest", two.root / "results")
            out, _ = watch.communicate(timeout=900)
            wait_until(lambda: storage_record(env.runs, RUN).get("done"), 300, f"run {RUN} finished on {REPLACEMENT} and its end stored")
            yield {"two": two, "env": env, "bucket": two.bucket, "s3": s3, "runs_b": env.runs, "at_loss": at_loss, "deploy": deploy,
                   "runs": runs, "fetched": fetched, "watch": watch, "watch_out": out, "address": address, "webhook": webhook,
                   "moto": moto_server}
        finally:
            if watch is not None and watch.poll() is None:
                watch.kill()
                watch.communicate()
            two.close()


def test_the_training_stores_its_run_with_the_laptops_credentials(stored):
    deploy = stored["deploy"]
    assert "storage: s3://" in deploy.out and "this machine's AWS credentials" in deploy.out, deploy.out
    at_loss = stored["at_loss"]
    assert at_loss["host"] == "a" and at_loss["state"] == "running" and 2 <= at_loss["epoch"] < EPOCHS, at_loss


def test_fab_runs_lists_the_run_from_storage_with_its_host_gone(stored):
    runs = stored["runs"]
    assert runs.returncode == 0, runs.out
    text = screen(runs.out)
    epoch = stored["at_loss"]["epoch"]
    assert f"Runs in s3://{stored['bucket']}/runs" in text
    assert RUN in text and " a " in text and "running" in text and f"{epoch}/{EPOCHS}" in text, runs.out
    assert "val_uar" in text  # the best validation so far


def test_fetch_results_reads_the_run_from_storage_when_the_host_is_unreachable(stored):
    fetched = stored["fetched"]
    assert fetched.returncode == 0, fetched.out
    assert "The host cannot be reached" in fetched.out and f"reading run {RUN} from storage instead" in fetched.out
    assert f"from storage s3://{stored['bucket']}/runs/{RUN}" in fetched.out
    local = stored["two"].root / "results" / "a" / RUN
    status = json.loads((local / "status.json").read_text())
    assert status["epoch"] == stored["at_loss"]["epoch"]
    assert (local / "best.keras").is_file() and (local / "config.yaml").is_file() and not (local / "backup").exists()


def test_deploy_full_resumes_the_stored_run_on_another_host_every_epoch_once(stored):
    """The watch's `-H e2e-r1 deploy-full --resume-from s3://...`, its output shown indented in the watch's."""
    resumed, runs_b, epoch = screen(stored["watch_out"]), stored["runs_b"], stored["at_loss"]["epoch"]
    assert f"from storage s3://{stored['bucket']}/runs/{RUN} (epoch {epoch}, running" in resumed, stored["watch_out"]
    assert "upload-run" in resumed and f"Training resumed: run {RUN}" in resumed, stored["watch_out"]
    epochs = [e for e, _ in history_epochs(runs_b / RUN)]
    assert epochs == list(range(EPOCHS)), epochs  # each epoch once: those of host a, then those of the replacement
    status = json.loads((runs_b / RUN / "status.json").read_text())
    assert status["state"] == "finished" and status["epoch"] == EPOCHS
    log = (runs_b / RUN / "train.log").read_text()
    assert f"Epoch {epoch + 1}/{EPOCHS}" in log.split("(resumed)")[-1] and f"Epoch {epoch}/{EPOCHS}" not in log.split("(resumed)")[-1]


def test_every_stored_pointer_came_after_the_files_it_names_and_the_end_is_stored(stored):
    history = check_pointers_came_last(stored["bucket"], f"runs/{RUN}/")
    epochs = [e for e, _, _ in history]
    # an epoch that ends while the previous one uploads is stored with the next (tiny epochs here: a second or two),
    # so which epochs between the first and the loss were stored depends on the machine's speed
    assert epochs == sorted(epochs) and {0, stored["at_loss"]["epoch"], EPOCHS} <= set(epochs), history
    assert history[-1] == (EPOCHS, "finished", True)
    latest = json.loads(stored["s3"].get_object(Bucket=stored["bucket"], Key=f"runs/{RUN}/LATEST")["Body"].read())
    assert latest["host"] == REPLACEMENT and latest["summary"]["metrics"]["split"] == "test"
    monitor = stored["env"].fab("-H", REPLACEMENT, "monitor")
    assert monitor.returncode == 0, monitor.out
    assert f"stored: epoch {EPOCHS}," in screen(monitor.out) and "(finished, final)" in screen(monitor.out), monitor.out
    runs = stored["env"].fab("runs", "--state", "finished")
    assert RUN in runs.out and "finished" in runs.out and f"{EPOCHS}/{EPOCHS}" in runs.out, runs.out


def test_a_terminated_host_s_run_is_resumed_on_a_launched_replacement_from_storage(stored):
    """Recovery end to end, with a recovery launch: host a (a launched spot instance) is terminated
    after epoch 3; it is the only host of recovery.hosts, so `fab watch` launches a replacement, resumes the run
    there from storage and terminates a (`fab down`)."""
    env, two, watch, out, webhook = stored["env"], stored["two"], stored["watch"], stored["watch_out"], stored["webhook"]
    assert watch.returncode == 0, out
    stored_epoch = int(out.split(f"recovered: run {RUN} on {REPLACEMENT} from epoch ")[1].split()[0])
    assert stored_epoch >= 3, out
    assert stored_epoch == stored["at_loss"]["epoch"], (stored_epoch, stored["at_loss"])  # the last epoch host a stored
    assert "host a unreachable for" in out and "  a: does not answer" in out, out  # the listed host, tried first
    assert f"no host of recovery.hosts is free: launching {REPLACEMENT} (g5.xlarge, spot)" in out, out
    assert f"-H {REPLACEMENT} deploy-full --resume-from s3://" in out and "a terminated (fab down)" in out, out
    ec2 = instances()
    assert ec2["a"]["State"]["Name"] == "terminated" and ec2[REPLACEMENT]["State"]["Name"] == "running", ec2
    assert ec2[REPLACEMENT]["InstanceLifecycle"] == "spot" and ec2[REPLACEMENT]["MetadataOptions"]["HttpTokens"] == "required"
    assert set(json.loads((two.root / "state" / "launched.json").read_text())["hosts"]) == {REPLACEMENT}

    run_dir = env.runs / RUN  # the replacement's (a's folders were deleted with it)
    history = history_epochs(run_dir)
    assert [e for e, _ in history] == list(range(EPOCHS)), history  # every epoch once
    metrics = json.loads((run_dir / "metrics.json").read_text())
    best = max(history, key=lambda row: row[1])  # the first epoch with the best val_uar
    assert metrics["best_epoch"] == best[0] + 1, (metrics["best_epoch"], history)
    assert abs(metrics["validation"]["uar"] - best[1]) < 1e-6, (metrics["validation"], best)  # scored with best.keras
    recoveries = json.loads((run_dir / "recoveries.json").read_text())["recoveries"]
    assert [(r["from_host"], r["host"], r["from_epoch"], r["launched"]) for r in recoveries] == [("a", REPLACEMENT, stored_epoch, True)]

    posts = [p for p in webhook.posts if p.get("run") != "r2"]  # (the last test's run comes after)
    assert sorted(p["event"] for p in posts) == ["finished", "preempted", "recovered", "started"], webhook.posts
    lost = next(p for p in posts if p["event"] == "preempted")
    assert lost["host"] == "a" and "unreachable" in lost["text"], lost
    recovered = next(p for p in posts if p["event"] == "recovered")
    assert recovered["host"] == REPLACEMENT and recovered["details"]["epoch"] == stored_epoch, recovered

    monitor = env.fab("monitor")  # the last deploy-full's host: the replacement
    assert monitor.returncode == 0 and f"from epoch {stored_epoch} (was on a" in monitor.out, monitor.out
    columns = env.env["COLUMNS"]
    env.env["COLUMNS"] = "250"  # the table on one line per run
    try:
        runs = env.fab("runs")  # storage only: host a is gone
    finally:
        env.env["COLUMNS"] = columns
    assert runs.returncode == 0 and "finished" in runs.out and f"a -> {REPLACEMENT} at epoch {stored_epoch}" in runs.out, runs.out
    # a's address: nobody answers (a folder of its own: the fetch at the loss is another test's)
    fetched = env.fab("-H", stored["address"], "fetch-results", "--run", RUN, "--dest", two.root / "results at the end")
    assert fetched.returncode == 0 and f"reading run {RUN} from storage instead" in fetched.out, fetched.out
    assert list((two.root / "results at the end").glob(f"*/{RUN}/metrics.json")), fetched.out


def test_a_storage_that_refuses_writes_shows_on_the_monitor_and_the_training_finishes(stored):
    env, runs_b = stored["env"], stored["runs_b"]
    env.write(train_config=str(write_config(stored["two"].root / "two epochs.yaml",
                                            **{**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "epochs": 2}})))
    key = env.env["AWS_ACCESS_KEY_ID"]
    env.env["AWS_ACCESS_KEY_ID"] = "AKIANOSUCHKEY0000000"  # sent to the host (credentials: laptop); the store knows no such key
    try:
        with refusing_unknown_keys(stored["moto"]):
            started = env.fab("-H", REPLACEMENT, "train", "--run-name", "r2")
            assert started.returncode == 0, started.out

            def failing_on_the_monitor():
                out = env.fab("-H", REPLACEMENT, "monitor").out
                return out if "uploads failing: InvalidAccessKeyId" in screen(out) else None

            shown = wait_until(failing_on_the_monitor, 120, "the monitor showing the refused uploads")
            assert "storage:" in screen(shown)
            wait_until(lambda: (runs_b / "r2" / "exit.json").exists(), 300, "run r2 to end")
            monitor = env.fab("-H", REPLACEMENT, "monitor")
    finally:
        env.env["AWS_ACCESS_KEY_ID"] = key
    assert monitor.returncode == 0 and "FINISHED" in monitor.out, monitor.out
    assert json.loads((runs_b / "r2" / "status.json").read_text())["state"] == "finished"
    record = storage_record(runs_b, "r2")
    assert record["failures"]["code"] == "InvalidAccessKeyId" and record["stored"] is None, record
