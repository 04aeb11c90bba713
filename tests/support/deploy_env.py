"""The deploy tests' host: `fab` against a real OpenSSH server on 127.0.0.1, one DeployEnv (inventory, state dir,
local data, remote paths) per test, and the host's venv made once for the whole run (tests/conftest.py's fixtures)."""

import os
import shlex
import subprocess
from pathlib import Path

from tests.support.helpers import ROOT, TINY_CONFIG, write_config
from tests.support.warm_runner import FAB, run_fab


def run_wide(tmp_path_factory, name, make):
    """`make(path)` once for the whole run: under pytest-xdist every worker's session gets the one folder the
    first made (its creation under an exclusive lock), as a run without xdist gets one of its own."""
    import fcntl

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the run's folder above popen-gwN
    path = shared / name / "venv"
    path.parent.mkdir(exist_ok=True)
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path.parent / "done").exists():
            make(path)
            (path.parent / "done").touch()
    return path


def make_host_venv(path):
    import sysconfig

    from deploy.demo.localhost import seed_venv

    venv = seed_venv(path, sysconfig.get_paths()["purelib"])
    # TensorFlow's absl lines on another CPU reach stderr whatever TF_CPP_MIN_LOG_LEVEL says; every
    # Python of the "host" prints one at exit, so no deploy step may read its result from the output.
    site = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "facenet-test-noise.pth").write_text(f"import atexit, sys; atexit.register(lambda: print({ABSL_NOISE!r}, file=sys.stderr))\n")
    return venv


ABSL_NOISE = ("E0000 00:00:1764000000.000000 4242 onednn_util.cc:55] oneDNN supports DT_BOOL only on platforms with AVX-512. "
              "Falling back to the default Eigen-based implementation if present.")


class DeployEnv:
    """One test's inventory, state dir, local data and remote paths (all with spaces, to test quoting)."""

    def __init__(self, root, ssh_host, venv):
        import uuid

        import yaml

        from deploy.demo.localhost import free_port

        self.root, self.yaml = root, yaml
        self.remote_root = root / "host root"
        self.data = root / "my data" / "crema-d"
        tag = uuid.uuid4().hex[:8]
        self.inventory = {
            "hosts": {"local": ssh_host.host_entry()},
            "remote": {"project_dir": str(self.remote_root / "project dir"), "venv": str(venv),
                       "data_dir": str(self.remote_root / "data dir"), "runs_dir": str(self.remote_root / "runs dir")},
            "local_data": [str(self.data)],
            "train_config": "configs/demo.yaml",
            "tmux_session": f"test-train-{tag}",
            "tensorboard": {"session": f"test-tb-{tag}", "remote_port": free_port(), "local_port": free_port()},
            "apt_packages": ["tmux", "rsync"],
            "pip": {"extra_args": ["--no-index"]},
            "ec2": {"metadata_url": None},  # no metadata requests from a test's host agent
            # a host `fab launch` makes has autostop armed: never this machine's poweroff
            "autostop": {"command": f"touch {shlex.quote(str(root / 'powered off'))}"},
        }
        self.write()
        self.env = {**os.environ, "FACENET_INVENTORY": str(root / "inventory.yaml"), "FACENET_STATE_DIR": str(root / "state"),
                    "COLUMNS": "120"}

    @property
    def runs(self):
        return Path(self.inventory["remote"]["runs_dir"])

    def write(self, **changes):
        self.inventory.update(changes)
        (self.root / "inventory.yaml").write_text(self.yaml.safe_dump(self.inventory))

    def fab(self, *args, timeout=300):
        """`fab ARGS` in the repo, as a user types it; CompletedProcess with .out = stdout + stderr."""
        proc = run_fab(args, cwd=ROOT, env=self.env, timeout=timeout)
        proc.out = proc.stdout + proc.stderr
        return proc

    def popen(self, *args):
        env = {**self.env, "PYTHONFAULTHANDLER": "1"}  # SIGABRT prints its threads' stacks (output_of)
        return subprocess.Popen([str(FAB), *map(str, args)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)

    def current_run(self):
        return (self.runs / ".current").read_text().strip()

    def agent_pid(self):
        """The pid of the host agent of this env's runs dir, or None."""
        import json

        try:
            return json.loads((self.runs / ".agent" / "state.json").read_text())["pid"]
        except (OSError, ValueError, KeyError):
            return None

    def cleanup(self):
        """End everything this env's host still runs: its tmux sessions, and the trainers, host agents
        and TensorBoard started under its folders (deploy.demo.localhost.end_host_processes)."""
        from deploy.demo.localhost import end_host_processes

        end_host_processes(self.root, (self.inventory["tmux_session"], self.inventory["tensorboard"]["session"]))


def env_on(root, ssh_host, venv):
    """A DeployEnv in the new folder `root` on `ssh_host` with `venv` (a generator for a fixture: it ends what the
    host still runs of it afterwards)."""
    root.mkdir()
    env = DeployEnv(root, ssh_host, venv)
    yield env
    env.cleanup()


def make_ready(env, tmp_path):
    """`env`'s host with code and 60 clips of data synced, and `env.configure(epochs, **data)`."""
    from trainer.data.synth import write_corpus

    write_corpus(env.data, "crema-d", clips=60, seed=9)

    def configure(epochs, pictures=False, **data):
        train = {**TINY_CONFIG["train"], "epochs": epochs, "pictures": pictures}
        cfg = write_config(tmp_path / f"train {epochs} {env.root.name}.yaml",
                           **{**TINY_CONFIG, "data": {**TINY_CONFIG["data"], **data}, "train": train})
        env.write(train_config=str(cfg), default_host="local")

    configure(2)
    for task in ("sync-code", "sync-data"):
        assert env.fab(task).returncode == 0, task
    env.configure = configure
    return env


def run_status(env, run):
    """The run's status.json on `env`'s host, or {} before the trainer wrote one."""
    import json

    path = env.runs / run / "status.json"
    return json.loads(path.read_text()) if path.exists() else {}
