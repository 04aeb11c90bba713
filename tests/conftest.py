"""The suite's fixtures and hooks; the helpers they use are in tests/support (tests import them from there)."""

from pathlib import Path

import pytest

from tests.support import warm_runner
from tests.support.aws import BUCKET, CIDR, DLAMI_PARAMETER, moto_ami, seed_public_parameter, ssh_alias_config
from tests.support.deploy_env import DeployEnv, env_on, make_host_venv, make_ready, run_wide
from tests.support.helpers import ROOT

# markers applied by fixture use and by folder, and `pytest --fast` (make test-fast): see tests/support/kinds.py;
# runs trained once a session and read by several tests: tests/support/fixtures_runs.py; nothing left running:
# tests/support/leftovers.py
pytest_plugins = ["tests.support.kinds", "tests.support.fixtures_runs", "tests.support.leftovers", "tests.support.cpu_report",
                  "tests.support.standin_fixtures"]


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


# --- the deploy tests: `fab` against a real OpenSSH server on 127.0.0.1 (tests/support/deploy_env.py) ----------


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    """The warm fab servers end with the session, before tests/support/leftovers.py looks for what outlived it (without
    pytest-xdist the session's process is this one, and atexit would be too late)."""
    warm_runner.close_all()


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


@pytest.fixture
def fresh_venv(tmp_path, _pristine_venv):
    """A host venv of this test's own, never provisioned (a copy of one made once a session): `fab provision`
    installs into it whatever ran before. `bin/python` works from the copy; nothing uses its scripts' shebangs."""
    import shutil

    return Path(shutil.copytree(_pristine_venv, tmp_path / "fresh venv", symlinks=True))


@pytest.fixture
def deploy_env(tmp_path, ssh_host, host_venv, monkeypatch):
    yield from env_on(tmp_path / "facenet deploy", ssh_host, host_venv)


@pytest.fixture
def host_ready(deploy_env, tmp_path):
    """A host with code and 60 clips of data synced; `configure(epochs=..)` sets the training config."""
    return make_ready(deploy_env, tmp_path)


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
        host = LocalSSHHost(tmp_path / "sshd", env={"PATH": f"{fake_bin}:/usr/local/bin:/usr/bin:/bin"}).start()
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


# --- EC2: moto's standalone server on 127.0.0.1 stands in for AWS (tests/support/aws.py) -------------


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


@pytest.fixture
def cloud_inv(tmp_path, ssh_host, aws, monkeypatch):
    """(inventory path, write(**changes)) for a laptop whose `launch:` settings point at moto and the local sshd."""
    import yaml

    monkeypatch.setenv("FACENET_STATE_DIR", str(tmp_path / "state"))
    path = tmp_path / "inventory.yaml"
    # `fab launch` arms autostop and the budget cap on the new host, which is this machine: a harmless command, and
    # the host's folders in this test's temp folder (never the login user's home)
    host = tmp_path / "host"
    data = {"hosts": {}, "ssh": {"config_file": str(ssh_alias_config(tmp_path / "ssh_config", ssh_host))},
            "autostop": {"command": f"touch '{host / 'powered off'}'"},
            "remote": {"project_dir": str(host / "project"), "data_dir": str(host / "data"), "runs_dir": str(host / "runs"),
                       "venv": str(host / "venv")},
            "launch": {"region": "us-east-1", "ssh_cidr": CIDR, "user": ssh_host.user, "public_key_file": f"{ssh_host.key_file}.pub",
                       "ssh_wait_seconds": 30}}

    def write(**launch):
        data["launch"].update(launch)
        path.write_text(yaml.safe_dump(data))
        return path

    write()
    monkeypatch.setenv("FACENET_INVENTORY", str(path))
    return write


@pytest.fixture
def launched_host(aws, moto_server, ssh_host, host_venv, tmp_path):
    """(env, s3): a DeployEnv whose host gpu1 was made by `fab launch` (moto), with the host scripts in place and storage on."""
    import shutil

    import boto3

    root = tmp_path / "laptop"
    root.mkdir()
    env = DeployEnv(root, ssh_host, host_venv)
    ssh_config = root / "ssh config"
    ssh_config.write_text(f"Host * !127.0.0.1\n    HostName 127.0.0.1\n    Port {ssh_host.port}\n")
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    env.write(hosts={}, ssh={"config_file": str(ssh_config)},
              launch={"region": "us-east-1", "ssh_cidr": CIDR, "user": ssh_host.user, "public_key_file": f"{ssh_host.key_file}.pub",
                      "ssh_wait_seconds": 60},
              storage={"url": f"s3://{BUCKET}/team", "endpoint_url": moto_server})
    launch = env.fab("launch", "gpu1", "--type", "g5.xlarge", timeout=300)
    assert launch.returncode == 0, launch.out
    shutil.copytree(ROOT / "remote_scripts", env.remote_root / "project dir" / "remote_scripts", dirs_exist_ok=True)  # sync-code did (launch)
    env.runs.mkdir(parents=True, exist_ok=True)
    yield env, s3
    env.cleanup()


@pytest.fixture
def webhook():
    """A local HTTP server on 127.0.0.1 that records the webhook posts it gets (tests/support/webhook.py): .url, .posts, .events()."""
    from tests.support.webhook import serve

    with serve() as hook:
        yield hook
