"""Nothing from the host is trusted, through `fab` against the real local SSH
host: a run comes home and goes out as regular files and folders only, its JSON paths are checked
before anything reaches the next host, and text from the host never drives the laptop's terminal."""

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.support.crafted_run import KEY, crafted_run

pytestmark = [pytest.mark.ssh, pytest.mark.slow]


@pytest.fixture
def env(deploy_env):
    deploy_env.write(default_host="local")
    return deploy_env


def resumable_run(tmp_path, old_dir="/old host/data dir/crema-d"):
    """A run as `fab fetch-results --backup` brings it home (tests/support/crafted_run.py's crafted run)."""
    run = crafted_run(tmp_path / "results" / "gpu1", old_dir, name="moved")
    (run / "backup").mkdir()
    (run / "backup" / "training_metadata.json").write_text("{}")
    return run


def links_in(folder):
    return [str(p) for p in Path(folder).rglob("*") if p.is_symlink()] if Path(folder).exists() else []


def test_deploy_full_resume_from_refuses_a_run_holding_links_before_touching_the_host(env, tmp_path):
    run = resumable_run(tmp_path)
    (run / "history.csv").symlink_to("/etc/shadow")
    (run / "logs").symlink_to(Path.home() / ".ssh")
    os.mkfifo(run / "backup" / "pipe")
    proc = env.fab("deploy-full", "--resume-from", run)
    assert proc.returncode == 2, proc.out
    assert "history.csv (a link to /etc/shadow)" in proc.out and f"logs (a link to {Path.home() / '.ssh'})" in proc.out
    assert "backup/pipe (a FIFO)" in proc.out and "nothing was done on the host" in proc.out
    assert "[1/" not in proc.out and not env.runs.exists() and "Traceback" not in proc.out


def test_deploy_full_resume_from_refuses_a_data_path_with_a_newline(env, tmp_path):
    """The reproduced attack's JSON half: a data dir in manifest.json with a key line between newlines."""
    run = resumable_run(tmp_path, old_dir=f"/old host\n{KEY}\n/crema-d")
    proc = env.fab("deploy-full", "--resume-from", run)
    assert proc.returncode == 2, proc.out
    assert f"{run / 'manifest.json'} dirs[0] holds a control character" in proc.out and "\\n" + KEY in proc.out
    assert KEY not in proc.out.replace("\\n" + KEY, "") and "[1/" not in proc.out and not env.runs.exists()


def test_fetch_results_refuses_a_host_run_holding_links_and_brings_none_home(env, tmp_path):
    assert env.fab("sync-code").returncode == 0
    run = env.runs / "evil"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 1\n")
    (run / "exit.json").write_text(json.dumps({"exit_code": 0, "ended_at": "2026-11-29T10:00:00+00:00"}))
    (run / "history.csv").symlink_to("/etc/shadow")
    fake_ssh = tmp_path / "host home" / ".ssh"
    fake_ssh.mkdir(parents=True)
    (run / "logs").symlink_to(fake_ssh)
    (run / "backup").mkdir()
    os.mkfifo(run / "backup" / "pipe")
    (env.runs / ".current").write_text("evil\n")
    dest = tmp_path / "results"
    for args in ((), ("--backup",)):
        proc = env.fab("fetch-results", "--dest", dest, *args)
        assert proc.returncode == 1, proc.out
        assert "Refusing to fetch run evil" in proc.out and "history.csv (a link to /etc/shadow)" in proc.out
        assert f"logs (a link to {fake_ssh})" in proc.out and "backup/pipe (a FIFO)" in proc.out and "Nothing was fetched" in proc.out
        assert links_in(dest) == [] and not (dest / "local" / "evil").exists()

    for name in ("history.csv", "logs", "backup"):  # once they are gone, the run comes home
        shutil.rmtree(run / name) if name == "backup" else (run / name).unlink()
    proc = env.fab("fetch-results", "--dest", dest)
    assert proc.returncode == 0, proc.out
    assert (dest / "local" / "evil" / "config.yaml").is_file() and links_in(dest) == []


ESCAPING_TRAINER = r"""#!/bin/bash
# a "trainer" whose output and files hold terminal escape sequences: a clear screen, a window title
while [ $# -gt 0 ]; do case "$1" in --out) out="$2"; shift ;; --run-name) name="$2"; shift ;; esac; shift; done
run="$out/$name"
echo '{"state": "running", "epoch": 0}' > "$run/status.json"  # past its start, as a trainer says: `fab train` need not wait
printf 'epoch 1 \033[2J cleared \033]0;pwned\007 titled\n'
touch "$run/$(printf 'evil\033[2J\nname.png')"
cat > "$run/metrics.json" <<'EOF'
{"headline": "validation", "test": null, "validation": {"samples": 2, "uar": 0.5, "accuracy": 0.5, "macro_f1": 0.5,
 "classes": ["ANG\u001b[2J", "HAP"], "confusion_matrix": [[1, 0], [0, 1]],
 "per_class": {"ANG\u001b[2J": {"precision": 1, "recall": 1, "f1": 1, "support": 1},
               "HAP": {"precision": 1, "recall": 1, "f1": 1, "support": 1}}}}
EOF
for _ in $(seq 600); do [ -e "$run/go" ] && break; sleep 0.1; done
printf 'last line \033[31mred\033[0m\n'
"""


def no_terminal_control(text):
    return not any(ch in text for ch in "\x1b\x07\x9b")


def test_escape_sequences_from_the_host_are_shown_never_sent_to_the_terminal(env, tmp_path):
    venv = tmp_path / "escaping venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(ESCAPING_TRAINER)
    (venv / "bin" / "python").chmod(0o755)
    env.write(remote={**env.inventory["remote"], "venv": str(venv)})
    assert env.fab("sync-code").returncode == 0
    train = env.fab("train", "--run-name", "esc")
    assert train.returncode == 0, train.out

    follow = env.popen("monitor", "--follow")
    seen = []
    for line in follow.stdout:  # until the log's first line came through (or fab ended)
        seen.append(line)
        if "titled" in line:
            break
    (env.runs / "esc" / "go").touch()  # the "trainer" writes its last line and ends
    rest, _ = follow.communicate(timeout=120)
    followed = "".join(seen) + rest
    assert follow.returncode == 0, followed
    assert no_terminal_control(followed), repr(followed)
    assert "epoch 1 \\x1b[2J cleared \\x1b]0;pwned\\x07 titled" in followed and "last line \\x1b[31mred\\x1b[0m" in followed
    assert "FINISHED" in followed

    logs = env.fab("logs")
    assert logs.returncode == 0 and no_terminal_control(logs.out), repr(logs.out)
    assert "\\x1b[2J cleared \\x1b]0;pwned\\x07 titled" in logs.out

    monitor = env.fab("monitor")
    assert monitor.returncode == 0 and no_terminal_control(monitor.out), repr(monitor.out)
    assert "last line \\x1b[31mred" in monitor.out

    fetched = env.fab("fetch-results", "--dest", tmp_path / "results")
    assert fetched.returncode == 0 and no_terminal_control(fetched.out), repr(fetched.out)
    assert "ANG\\x1b[2J" in fetched.out and "Pictures: evil\\x1b[2J\\nname.png in" in fetched.out
    assert (tmp_path / "results" / "local" / "esc" / "evil\x1b[2J\nname.png").is_file()  # the file itself is kept as named
