import functools
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

# markers applied by fixture use, and `pytest --fast` (make test-fast): see tests/kinds.py;
# runs trained once a session and read by several tests: tests/fixtures_runs.py; nothing left running: tests/leftovers.py
pytest_plugins = ["kinds", "fixtures_runs", "leftovers", "standin_fixtures"]


def write_clip(path, frames=10, dim=512, key="video_features", value=None, dtype=np.float32, **extra):
    """A feature file with `frames` random frames (or `value` as the array itself)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = value if value is not None else np.random.default_rng(frames).normal(size=(frames, dim)).astype(dtype)
    np.savez(path, **{key: arr}, **extra)
    return path


@pytest.fixture(autouse=True)
def _signals_restored():
    """A trainer run in this process ignores SIGTERM and SIGHUP once its end is recorded (trainer/training/run.py),
    and an ignored signal stays ignored in every child started after: a later test's `sleep` standing in for a
    trainer then outlived its SIGTERM (test_notify took 17 s instead of 2). Each test starts with this process's own."""
    import signal

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        if handler is not None:
            signal.signal(sig, handler)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Keep the validation cache of each test in its own temp dir, not in ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture(scope="session")
def synth_crema(tmp_path_factory):
    """240 synthetic CREMA-D clips (read-only: copy before changing)."""
    from trainer.data.synth import write_corpus

    out = tmp_path_factory.mktemp("synth") / "crema-d"
    write_corpus(out, "crema-d", clips=240, seed=3)
    return out


def run_trainer(*args, cwd=None, timeout=300, env=None):
    """`python -m trainer ARGS` as a subprocess; returns CompletedProcess with text output."""
    return subprocess.run([sys.executable, "-m", "trainer", *map(str, args)], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


# --- the deploy tests: `fab` against a real OpenSSH server on 127.0.0.1 ---------------------

import fab_runner  # noqa: E402
from fab_runner import FAB, run_fab  # noqa: E402  (`fab` from a warm fork server: tests/fab_server.py)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    """The warm fab servers end with the session, before tests/leftovers.py looks for what outlived it (without
    pytest-xdist the session's process is this one, and atexit would be too late)."""
    fab_runner.close_all()


@pytest.fixture(scope="session")
def ssh_host(tmp_path_factory):
    """A real sshd on 127.0.0.1 at a free port, accepting a key generated for this session."""
    from deploy.demo.localhost import LocalSSHHost

    host = LocalSSHHost(tmp_path_factory.mktemp("sshd")).start()
    yield host
    host.stop()


@pytest.fixture(scope="session")
def host_venv(tmp_path_factory):
    """The "host"'s venv: a real venv that sees this environment's packages (no second TensorFlow download).
    Shared by the session, and by every pytest-xdist worker of the run: whichever test provisions it first
    installs; tests that assert the first install use `fresh_venv`."""
    return run_wide(tmp_path_factory, "host venv", make_host_venv)


@pytest.fixture(scope="session")
def _pristine_venv(tmp_path_factory):
    return run_wide(tmp_path_factory, "pristine venv", make_host_venv)


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


@pytest.fixture
def fresh_venv(tmp_path, _pristine_venv):
    """A host venv of this test's own, never provisioned (a copy of one made once a session): `fab provision`
    installs into it whatever ran before. `bin/python` works from the copy; nothing uses its scripts' shebangs."""
    import shutil

    return Path(shutil.copytree(_pristine_venv, tmp_path / "fresh venv", symlinks=True))


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
        return subprocess.Popen([str(FAB), *map(str, args)], cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
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


@pytest.fixture
def deploy_env(tmp_path, ssh_host, host_venv, monkeypatch):
    root = tmp_path / "facenet deploy"
    root.mkdir()
    env = DeployEnv(root, ssh_host, host_venv)
    yield env
    env.cleanup()


@pytest.fixture
def host_ready(deploy_env, tmp_path):
    """A host with code and 60 clips of data synced; `configure(epochs=..)` sets the training config."""
    return make_ready(deploy_env, tmp_path)


def make_ready(env, tmp_path):
    """`env`'s host with code and 60 clips of data synced, and `env.configure(epochs, **data)`."""
    from trainer.data.synth import write_corpus

    write_corpus(env.data, "crema-d", clips=60, seed=9)

    def configure(epochs, **data):
        cfg = write_config(tmp_path / f"train {epochs} {env.root.name}.yaml",
                           **{**TINY_CONFIG, "data": {**TINY_CONFIG["data"], **data}, "train": {**TINY_CONFIG["train"], "epochs": epochs}})
        env.write(train_config=str(cfg), default_host="local")

    configure(2)
    for task in ("sync-code", "sync-data"):
        assert env.fab(task).returncode == 0, task
    env.configure = configure
    return env


@pytest.fixture
def fake_bin_host(tmp_path, host_venv):
    """`make(**scripts)`: a second real sshd whose PATH starts with fake programs (name -> shell script),
    for what cannot run here (nvidia-smi, a system apt-get); returns its DeployEnv (`.fake_bin` is the folder)."""
    from deploy.demo.localhost import LocalSSHHost

    started = []

    def make(**scripts):
        fake_bin = tmp_path / "fakebin"
        fake_bin.mkdir()
        for name, text in scripts.items():
            (fake_bin / name.replace("_", "-")).write_text(text)
            (fake_bin / name.replace("_", "-")).chmod(0o755)
        host = LocalSSHHost(tmp_path / "sshd", extra_config=f"SetEnv PATH={fake_bin}:/usr/local/bin:/usr/bin:/bin\n").start()
        root = tmp_path / "gpu deploy"
        root.mkdir()
        env = DeployEnv(root, host, host_venv)
        env.fake_bin = fake_bin
        env.write(default_host="local")
        started.append((env, host))
        return env

    yield make
    for env, host in started:
        env.cleanup()
        host.stop()


def write_config(path, **sections):
    """A training config file (YAML) with the given sections, e.g. train={"epochs": 40}."""
    import yaml

    path.write_text(yaml.safe_dump(sections))
    return path


TINY_CONFIG = {"data": {"max_frames": 40}, "model": {"units": 8, "head_units": 8},
               "train": {"batch_size": 16, "workers": 1, "patience": 100, "lr_patience": 100}}


def run_status(env, run):
    """The run's status.json on `env`'s host, or {} before the trainer wrote one."""
    import json

    path = env.runs / run / "status.json"
    return json.loads(path.read_text()) if path.exists() else {}


def wait_until(predicate, timeout=120, what="condition"):
    """The first true value of `predicate()`, polled every 0.3 s; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# --- EC2: moto's standalone server on 127.0.0.1 stands in for AWS (tests/test_ec2_*.py) -------------

DLAMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id"


@pytest.fixture(scope="session")
def moto_server():
    """moto's server (a real HTTP endpoint, boto3 talks to it as to AWS) on 127.0.0.1 at a free port; its URL."""
    pytest.importorskip("moto", reason="the EC2 tests need moto[server] (the dev extra)")
    from moto.server import ThreadedMotoServer

    from deploy.demo.localhost import free_port

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_server, monkeypatch):
    """A fresh moto account for one test, boto3 pointed at it (AWS_ENDPOINT_URL, fake credentials), and the
    public DLAMI parameter AWS publishes, which moto lacks: it names one of moto's AMIs. Returns the URL."""
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"), timeout=10).read()
    for key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    seed_public_parameter("us-east-1", DLAMI_PARAMETER, moto_ami("us-east-1"))
    return moto_server


@functools.lru_cache
def moto_ami(region):
    """One of the Ubuntu AMIs moto ships (the same after every reset)."""
    import boto3

    images = boto3.client("ec2", region_name=region).describe_images(Owners=["amazon"])["Images"]
    return next(i["ImageId"] for i in images if "ubuntu" in i.get("Name", "").lower())


def seed_public_parameter(region, name, value):
    """A public /aws/service/ parameter in moto's SSM (nobody may put one through the API, as on AWS)."""
    from datetime import datetime, timezone

    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ssm.models import Parameter, ssm_backends

    ssm_backends[DEFAULT_ACCOUNT_ID][region]._parameters[name].append(Parameter(
        account_id=DEFAULT_ACCOUNT_ID, name=name, value=value, parameter_type="String", description=None, allowed_pattern=None,
        keyid=None, last_modified_date=datetime.now(timezone.utc), version=1, data_type="aws:ec2:image"))


def mount_tmpfs(path, size):
    """A real tmpfs of `size` (e.g. "2m") mounted at `path` (made here): a small disk to fill. Skips the
    test where that cannot be (not root, mount not permitted). Unmount with `umount -l PATH`."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs as the host's runs dir")
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True).returncode != 0:
        pytest.skip("mount -t tmpfs is not permitted here")
    return path


@pytest.fixture
def webhook():
    """A local HTTP server on 127.0.0.1 that records the webhook posts it gets (tests/webhook.py): .url, .posts, .events()."""
    from tests.webhook import serve

    with serve() as hook:
        yield hook
