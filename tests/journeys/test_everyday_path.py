"""The everyday path as a newcomer walks it: change the config and train, fix a failed start and resume,
stop, read the log. Each of these was a trap once (the host's old config, a resume that could never work,
raw JSON from `fab stop`, TensorFlow's C++ lines in the log).

Real parts: `fab` against the suite's sshd on 127.0.0.1, real rsync and tmux; the trainings are the stand-in
trainer's (tests/support/standin_trainer.py): what these tests read is fab's, the run's config, records and states,
never the training's numbers (TensorFlow's C++ lines are written into the log by the test itself).
"""


import pytest
import yaml

from tests.support.deploy_env import ABSL_NOISE, run_status
from tests.support.helpers import ROOT, wait_until

pytestmark = [pytest.mark.ssh, pytest.mark.slow]


def test_train_runs_the_config_as_this_machine_has_it_not_the_hosts_old_copy(standin_ready):
    env = standin_ready
    env.write(train_config="configs/demo.yaml")  # a config of the repo, synced to the host by sync-code
    local = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())["train"]["epochs"]
    stale = env.remote_root / "project dir" / "configs" / "demo.yaml"
    stale.write_text(stale.read_text().replace(f"epochs: {local}", "epochs: 77"))  # the host's copy from an earlier sync
    assert "epochs: 77" in stale.read_text()

    started = env.fab("train", "--run-name", "sent")
    assert started.returncode == 0, started.out
    assert f"Training started: run sent with config configs/demo.yaml (train.epochs {local}) as on this machine" in started.out
    wait_until(lambda: (env.runs / "sent" / "config.yaml").exists(), 60, "the run's resolved config")
    assert yaml.safe_load((env.runs / "sent" / "config.yaml").read_text())["train"]["epochs"] == local
    stopped = env.fab("stop", "--wait", "60")
    assert stopped.returncode == 0, stopped.out
    line = next(x for x in stopped.out.splitlines() if "run sent" in x)
    assert line.startswith("Stopped run sent ") and line.endswith("Continue it with `fab train --resume`."), stopped.out
    assert "{" not in stopped.out  # a sentence, not the exit record's JSON

    big = env.root / "big config.yaml"  # over a shell command line's limit (128 KiB per argument): sent on stdin
    big.write_text(yaml.safe_dump({**yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())}) + "# padding\n" * 30000)
    env.write(train_config=str(big))
    checked = env.fab("preflight")
    assert checked.returncode == 0, checked.out[-2000:]
    [sent] = [p for p in (env.runs / ".configs").iterdir() if p.name.startswith("big config-")]
    assert sent.read_bytes() == big.read_bytes()


def test_a_run_that_failed_before_its_data_was_ready_resumes_once_the_data_is_there(standin_ready):
    env = standin_ready
    marker = env.remote_root / "data dir" / "crema-d" / ".facenet-upload-incomplete"  # an upload cut short (sync-data)
    marker.write_text("")
    failed = env.fab("train", "--run-name", "r2")
    assert failed.returncode == 1, failed.out
    cause = failed.out.split("Training r2 ended at once: ", 1)[1].splitlines()[0]
    assert "upload" in cause and "has not completed" in cause, failed.out
    advice = env.fab("monitor")
    assert advice.returncode == 1 and "fab train --resume" in advice.out, advice.out

    marker.unlink()  # what a verified `fab sync-data` leaves
    resumed = env.fab("train", "--resume")
    assert resumed.returncode == 0 and "Training resumed: run r2 with its own config" in resumed.out, resumed.out
    wait_until(lambda: (env.runs / "r2" / "exit.json").exists(), 300, "the resumed run to end")
    done = env.fab("monitor")
    assert done.returncode == 0 and "FINISHED" in done.out.upper(), done.out
    assert run_status(env, "r2")["epoch"] == 2

    with open(env.runs / "r2" / "train.log", "a") as log:  # what TensorFlow's C++ side prints on some CPUs
        log.write(f"{ABSL_NOISE}\nthe last line of the run\n")
    quiet, raw = env.fab("logs", "--lines", "5"), env.fab("logs", "--lines", "5", "--raw")
    assert quiet.returncode == raw.returncode == 0
    assert "the last line of the run" in quiet.out and "onednn_util.cc" not in quiet.out, quiet.out
    assert len([x for x in quiet.out.splitlines()[2:] if x.strip()]) == 5, quiet.out  # after host: and the rule, five of the run's own
    assert "onednn_util.cc" in raw.out, raw.out
    shown = env.fab("monitor")
    assert "the last line of the run" in shown.out and "onednn_util.cc" not in shown.out, shown.out
    assert "onednn_util.cc" in env.fab("monitor", "--raw").out
