"""inventory.yaml loading and the choice of host: fast, no SSH."""

from pathlib import Path

import pytest
import yaml
from fabric import Config, Connection
from invoke import Context

from deploy.errors import InventoryError, LocalInputError
from deploy.host.connection import connect
from deploy.host.login import key_files
from deploy.host.quoting import rq
from deploy.host.remembered import remember_host
from deploy.inventory import load_inventory
from deploy.paths import REPO_ROOT


def write(tmp_path, data):
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_shipped_inventory_loads_with_the_documented_defaults():
    inv = load_inventory(REPO_ROOT / "inventory.yaml")
    assert inv.remote["runs_dir"] == "~/facenet-runs" and inv.tmux_session == "facenet-training"
    assert inv.tensorboard["remote_port"] == 6006 and inv.default_host is None
    assert inv.local_data == [REPO_ROOT / "data" / "crema-d"]
    assert any(r.startswith("tensorflow[and-cuda]") for r in inv.pip["gpu"])
    assert any(r.startswith("tensorflow-cpu") for r in inv.pip["cpu"])


def test_a_minimal_inventory_takes_defaults_and_resolves_local_paths_against_its_folder(tmp_path):
    inv = load_inventory(write(tmp_path, {"hosts": {"gpu": {"address": "10.0.0.5", "key_file": "keys/gpu.pem"}},
                                         "local_data": ["data/crema-d", "/abs/ravdess"]}))
    assert inv.hosts["gpu"].port == 22 and inv.hosts["gpu"].key_file == str(tmp_path / "keys" / "gpu.pem")
    assert inv.local_data == [tmp_path / "data" / "crema-d", Path("/abs/ravdess")]
    assert inv.find_host("10.0.0.5") is inv.hosts["gpu"] and inv.find_host("gpu") is inv.hosts["gpu"]
    assert inv.apt_packages == ["tmux", "rsync", "python3-venv"]


@pytest.mark.parametrize("data, message", [
    ({"remote": {"run_dir": "~/x"}}, "Unknown inventory key 'remote.run_dir'"),
    ({"tmux": "x"}, "Unknown inventory key 'tmux'"),
    ({"hosts": {"gpu": {"address": "1.2.3.4", "username": "u"}}}, "Unknown inventory key 'hosts.gpu.username'"),
    ({"hosts": {"gpu": {"user": "ubuntu"}}}, "'hosts.gpu.address' in"),
    ({"hosts": {"gpu": {"address": "1.2.3.4", "port": "22"}}}, "'hosts.gpu.port' in"),
    ({"hosts": {"gpu": {"address": "1.2.3.4", "port": 70000}}}, "expects a port 1-65535. Received: 70000"),
    ({"default_host": "gpu"}, "'default_host' in"),
    ({"local_data": "data/crema-d"}, "'local_data' in"),
    ({"local_data": ["a/crema-d", "b/crema-d"]}, "Received two named 'crema-d'"),
    ({"tensorboard": {"local_port": 0}}, "'tensorboard.local_port'"),
    ({"tensorboard": {"remote_port": True}}, "'tensorboard.remote_port'"),
    ({"pip": {"gpu": "tensorflow"}}, "'pip.gpu' in"),
    ({"train_config": ""}, "'train_config' in"),
    ({"price_per_hour": "1.2"}, "'price_per_hour' in"),
    ({"price_per_hour": -1}, "expects a number above 0 or null. Received: -1"),
    ({"hosts": {"gpu": {"address": "1.2.3.4", "price_per_hour": 0}}}, "'hosts.gpu.price_per_hour' in"),
    ({"autostop": {"idle_minutes": 0}}, "'autostop.idle_minutes' in"),
    ({"autostop": {"idle_minutes": True}}, "'autostop.idle_minutes' in"),
    ({"autostop": {"command": ""}}, "'autostop.command' in"),
    ({"ec2": {"poll_seconds": None}}, "'ec2.poll_seconds' in"),
    ({"ec2": {"metadata_url": "169.254.169.254"}}, "'ec2.metadata_url' in"),
    ({"ec2": {"metadata_url": True}}, "or null / off for no metadata requests. Received: True"),
    ({"autostop": {"wait_for": ["jobs"]}}, "'autostop.wait_for' in"),
    ({"autostop": {"wait_for": "ssh"}}, "'autostop.wait_for' in"),
])
def test_bad_inventory_values_name_the_key(tmp_path, data, message):
    with pytest.raises(InventoryError) as err:
        load_inventory(write(tmp_path, data))
    assert message in str(err.value) and str(tmp_path) in str(err.value)


def test_metadata_url_null_or_off_turns_the_probe_off_and_a_named_url_is_explicit(tmp_path):
    default = load_inventory(write(tmp_path, {}))
    assert default.ec2["metadata_url"] == "http://169.254.169.254" and not default.ec2["metadata_url_explicit"]
    assert default.autostop["wait_for"] == ["ssh", "gpu"]
    for off in (None, "off"):
        assert load_inventory(write(tmp_path, {"ec2": {"metadata_url": off}})).ec2["metadata_url"] is None
    bare = tmp_path / "bare.yaml"
    bare.write_text("ec2:\n  metadata_url: off\n")  # YAML reads a bare off as false
    assert load_inventory(bare).ec2["metadata_url"] is None
    named = load_inventory(write(tmp_path, {"ec2": {"metadata_url": "http://169.254.169.254"}}))
    assert named.ec2["metadata_url_explicit"]  # named, even as the default: the agent never gives it up
    assert load_inventory(write(tmp_path, {"autostop": {"wait_for": []}})).autostop["wait_for"] == []


def test_a_missing_inventory_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("FACENET_INVENTORY", str(tmp_path / "nope.yaml"))
    with pytest.raises(InventoryError, match="nope.yaml does not exist.*FACENET_INVENTORY"):
        load_inventory()


def key(tmp_path, name, mode=0o600):
    path = tmp_path / name
    path.write_text("not a real key: only its mode is checked here\n")
    path.chmod(mode)
    return str(path)


def test_host_choice_is_dash_h_then_the_remembered_host_then_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("FACENET_STATE_DIR", str(tmp_path / "state"))
    a_key = key(tmp_path, "a.pem")
    inv = load_inventory(write(tmp_path, {"default_host": "a", "hosts": {
        "a": {"address": "10.0.0.1", "user": "ubuntu", "key_file": a_key},
        "b": {"address": "10.0.0.2", "user": "ec2-user", "port": 2222}}}))
    ctx = Context(config=Config())
    target = connect(ctx, inv)
    assert (target.label, target.conn.host, target.conn.user) == ("a", "10.0.0.1", "ubuntu")
    assert target.conn.connect_kwargs["key_filename"] == [a_key]
    remember_host(connect(Connection("b", config=Config()), inv))
    target = connect(ctx, inv)
    assert (target.label, target.conn.host, target.conn.port) == ("b", "10.0.0.2", 2222)
    moved = load_inventory(write(tmp_path, {"default_host": "a", "hosts": {  # b got a new address after a stop and start
        "a": {"address": "10.0.0.1", "user": "ubuntu", "key_file": a_key}, "b": {"address": "10.0.0.9", "user": "ec2-user"}}}))
    assert (connect(ctx, moved).label, connect(ctx, moved).conn.host) == ("b", "10.0.0.9")
    given = connect(Connection("admin@10.0.0.1", config=Config()), inv)  # -H by address: the entry's key and port apply
    assert (given.conn.user, given.conn.connect_kwargs["key_filename"]) == ("admin", [a_key])
    other = connect(Connection("ubuntu@198.51.100.7:2200", config=Config()), inv)
    assert (other.conn.host, other.conn.port, other.conn.user) == ("198.51.100.7", 2200, "ubuntu")


def test_a_host_given_with_dash_h_and_dash_i_is_remembered_with_its_key(tmp_path, monkeypatch):
    """`fab -H ubuntu@IP -i key.pem deploy-full`, then `fab monitor` with no flags: same user, port and key."""
    monkeypatch.setenv("FACENET_STATE_DIR", str(tmp_path / "state"))
    pem = key(tmp_path, "gpu.pem")
    inv = load_inventory(write(tmp_path, {}))
    config = Config(overrides={"connect_kwargs": {"key_filename": [pem]}})  # what `fab -i` sets
    remember_host(connect(Connection("ubuntu@198.51.100.7:2200", config=config), inv))
    saved = (tmp_path / "state" / "state.json").read_text()
    assert pem in saved and "not a real key" not in saved  # the path, never the key
    later = connect(Context(config=Config()), inv)
    assert (later.conn.user, later.conn.host, later.conn.port) == ("ubuntu", "198.51.100.7", 2200)
    assert later.conn.connect_kwargs["key_filename"] == [pem]
    assert later.describe() == f"ubuntu@198.51.100.7:2200, key {pem}"


def test_a_key_file_others_can_read_is_refused_before_rsync_fails_on_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FACENET_STATE_DIR", str(tmp_path / "state"))
    loose = key(tmp_path, "loose.pem", mode=0o644)
    inv = load_inventory(write(tmp_path, {"default_host": "a", "hosts": {"a": {"address": "10.0.0.1", "key_file": loose}}}))
    with pytest.raises(LocalInputError, match=f"SSH key file {loose} has mode 0644.*chmod 600"):
        connect(Context(config=Config()), inv)


@pytest.mark.parametrize("remote, message", [
    ({"project_dir": "~"}, "not the home directory"),
    ({"project_dir": "~/"}, "not the home directory"),
    ({"project_dir": "/"}, "not the home directory"),
    ({"project_dir": "~/work", "data_dir": "~/work/data"}, "remote.data_dir"),
    ({"project_dir": "~/work/code", "runs_dir": "~/work"}, "remote.runs_dir"),
    ({"project_dir": "~/facenet-venv/"}, "remote.venv"),
    ({"project_dir": "facenet-runs"}, "remote.runs_dir"),  # relative means under home, like ~/facenet-runs
])
def test_a_project_dir_that_a_code_sync_could_wipe_is_refused(tmp_path, remote, message):
    with pytest.raises(InventoryError, match="'remote.project_dir'") as err:
        load_inventory(write(tmp_path, {"remote": remote}))
    assert message in str(err.value)


def test_a_project_dir_beside_the_others_is_fine(tmp_path):
    inv = load_inventory(write(tmp_path, {"remote": {"project_dir": "~/work/code", "data_dir": "~/work/data", "runs_dir": "~/work/runs"}}))
    assert inv.remote["project_dir"] == "~/work/code"


@pytest.mark.parametrize("data", [{"tmux_session": "a.b"}, {"tmux_session": "a:b"}, {"tensorboard": {"session": "-x"}},
                                  {"allow_cpu_training": "yes"}, {"ssh": {"keepalive_interval": 0}}])
def test_bad_session_names_and_settings_are_refused(tmp_path, data):
    with pytest.raises(InventoryError, match=f"'{next(iter(data))}"):
        load_inventory(write(tmp_path, data))


def test_no_host_at_all_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FACENET_STATE_DIR", str(tmp_path / "state"))
    with pytest.raises(LocalInputError, match="No host to act on: pass -H user@address"):
        connect(Context(config=Config()), load_inventory(write(tmp_path, {})))


def test_remote_paths_are_single_shell_words_with_home_kept():
    assert rq("~/runs dir") == "\"$HOME\"/'runs dir'"
    assert rq("/srv/a b;rm -rf x") == "'/srv/a b;rm -rf x'"
    assert rq("~") == '"$HOME"'


def test_the_tensorflow_pin_and_log_level_each_have_one_owner():
    inv = load_inventory(REPO_ROOT / "inventory.yaml")
    version = next(r for r in inv.pip["cpu"] if r.startswith("tensorflow-cpu==")).split("==")[1]
    assert f"tensorflow[and-cuda]=={version}" in inv.pip["gpu"]
    sources = [p for p in [*REPO_ROOT.glob("deploy/**/*.py"), *REPO_ROOT.glob("trainer/**/*.py"), *REPO_ROOT.glob("remote_scripts/*"),
                           *REPO_ROOT.glob("configs/*.yaml"), REPO_ROOT / "inventory.yaml", REPO_ROOT / "Makefile"]
               if p.is_file()]  # (not remote_scripts/__pycache__)
    assert [p.name for p in sources if version in p.read_text()] == []  # setup.cfg alone pins it
    setters = [p.name for p in [*sources, *REPO_ROOT.glob("tests/**/*.py"), *REPO_ROOT.glob("bench/*.py")]
               if p.name != Path(__file__).name and any(f"TF_CPP_MIN_LOG_LEVEL{end}" in p.read_text() for end in ('"', "="))]
    assert setters == ["startup.py"]


def test_prices_and_autostop_settings_are_read_per_host(tmp_path):
    inv = load_inventory(write(tmp_path, {"hosts": {"gpu": {"address": "1.2.3.4", "price_per_hour": 3.06}, "cpu": {"address": "5.6.7.8"}},
                                         "price_per_hour": 1, "autostop": {"idle_minutes": 0.5}}))
    assert inv.price_of("gpu") == 3.06 and inv.price_of("cpu") == 1 and inv.price_of("root@9.9.9.9:22") == 1
    assert inv.autostop == {"idle_minutes": 0.5, "command": "sudo -n /sbin/poweroff", "wait_for": ["ssh", "gpu"], "shutdown_terminates": False,
                            "done_minutes": 10}
    assert load_inventory(write(tmp_path, {})).price_of("gpu") is None


def test_a_launched_host_stops_billing_by_default_and_null_turns_each_guard_off(tmp_path):
    inv = load_inventory(write(tmp_path, {}))
    assert (inv.launch["autostop_minutes"], inv.launch["max_hours"], inv.autostop["done_minutes"]) == (30, 24, 10)
    assert inv.recovery["down_when_done"] is False
    off = load_inventory(write(tmp_path, {"launch": {"autostop_minutes": None, "max_hours": None}, "autostop": {"done_minutes": None}}))
    assert (off.launch["autostop_minutes"], off.launch["max_hours"], off.autostop["done_minutes"]) == (None, None, None)
    zero = load_inventory(write(tmp_path, {"launch": {"autostop_minutes": 0, "max_hours": 0}}))  # 0: off, as --idle-minutes 0
    assert (zero.launch["autostop_minutes"], zero.launch["max_hours"]) == (None, None)
    for key in ("autostop_minutes", "max_hours"):
        with pytest.raises(InventoryError, match=rf"'launch.{key}' in .* expects a number above 0 \(null or 0: off\). Received: -1"):
            load_inventory(write(tmp_path, {"launch": {key: -1}}))


HOSTS = {"gpu1": {"address": "203.0.113.10", "worker_address": "10.0.1.10"},
         "gpu2": {"address": "203.0.113.11", "worker_address": "10.0.1.11", "worker_port": 23999,
                  "remote": {"runs_dir": "/data/runs"}}}


def test_a_cluster_names_its_hosts_chief_first_with_their_worker_addresses_and_own_paths(tmp_path):
    from deploy.host.cluster import tf_config, tf_config_workers

    inv = load_inventory(write(tmp_path, {"hosts": HOSTS, "clusters": {"pair": {"hosts": ["gpu1", "gpu2"]}}}))
    pair = inv.clusters["pair"]
    assert pair.hosts == ("gpu1", "gpu2") and pair.port == 23456
    assert tf_config_workers(inv, pair) == ["10.0.1.10:23456", "10.0.1.11:23999"]
    assert tf_config(tf_config_workers(inv, pair), 1) == \
        '{"cluster":{"worker":["10.0.1.10:23456","10.0.1.11:23999"]},"task":{"type":"worker","index":1}}'
    assert inv.for_host("gpu2").remote["runs_dir"] == "/data/runs" and inv.for_host("gpu2").remote["venv"] == "~/facenet-venv"
    assert inv.for_host("gpu1") is inv
    same = load_inventory(write(tmp_path, {"hosts": {"a": {"address": "10.0.0.1"}, "b": {"address": "10.0.0.1"}},
                                           "clusters": {"pair": {"hosts": ["a", "b"]}}}))
    with pytest.raises(LocalInputError, match="same address and port"):
        tf_config_workers(same, same.clusters["pair"])


@pytest.mark.parametrize("clusters, message", [
    ({"pair": {"hosts": ["gpu1"]}}, "two or more different host names"),
    ({"pair": {"hosts": ["gpu1", "gpu1"]}}, "two or more different host names"),
    ({"pair": {"hosts": ["gpu1", "gpu9"]}}, "names gpu9, not under hosts"),
    ({"pair": {"hosts": ["gpu1", "gpu2"], "port": 70000}}, "expects a port 1-65535"),
    ({"pair": {"hosts": ["gpu1", "gpu2"], "ports": 1}}, "expects a mapping with hosts"),
    ({"gpu1": {"hosts": ["gpu1", "gpu2"]}}, "a host has the same name"),
])
def test_a_bad_cluster_is_refused_naming_the_key(tmp_path, clusters, message):
    with pytest.raises(InventoryError, match=message):
        load_inventory(write(tmp_path, {"hosts": HOSTS, "clusters": clusters}))


def test_a_host_may_override_only_known_remote_paths(tmp_path):
    bad = {"gpu1": {"address": "10.0.0.1", "remote": {"run_dir": "/x"}}}
    with pytest.raises(InventoryError, match="hosts.gpu1.remote"):
        load_inventory(write(tmp_path, {"hosts": bad}))
    inside = {"gpu1": {"address": "10.0.0.1", "remote": {"project_dir": "~/facenet-runs/code"}}}
    with pytest.raises(InventoryError, match="remote.project_dir"):
        load_inventory(write(tmp_path, {"hosts": inside}))


class Recorder:
    """A Connection that runs nothing: it keeps each command and answers as a host would (the smoke test's
    result file holds {"ok": true})."""

    def __init__(self):
        self.commands = []

    def run(self, command, **kwargs):
        from types import SimpleNamespace

        self.commands.append(command)
        stdout = '{"ok": true, "message": "Smoke test passed"}' if command.startswith("cat ") else "started"
        return SimpleNamespace(ok=True, failed=False, exited=0, stdout=stdout, stderr="")


def argument(command, flag):
    """The word after `flag` in a shell command (quoted as rq quotes it: "$HOME"/'x' reads back as ~/x)."""
    import shlex

    words = shlex.split(command.replace('"$HOME"', "~"))
    return words[words.index(flag) + 1]


@pytest.mark.parametrize("data, smoke", [
    ({}, "~/facenet-runs-smoke"),
    ({"remote": {"runs_dir": "/data/runs/"}}, "/data/runs-smoke"),
    ({"remote": {"smoke_dir": "/scratch/smoke"}}, "/scratch/smoke"),
])
def test_the_smoke_test_writes_its_runs_outside_the_folder_tensorboard_reads(tmp_path, data, smoke):
    from deploy.host import checks, observe

    inv = load_inventory(write(tmp_path, data))
    host = Recorder()
    checks.smoke_test(host, inv, lambda line: None)
    observe.start_tensorboard(host, inv, lambda line: None)
    (smoke_command,) = [c for c in host.commands if " -m trainer smoke " in c]
    (tensorboard_command,) = [c for c in host.commands if "tensorboard.sh" in c]
    out = argument(smoke_command, "--out")
    logdir = argument(tensorboard_command, inv.remote["venv"])  # tensorboard.sh VENV RUNS_DIR SESSION PORT: its --logdir
    assert out == smoke and logdir == inv.remote["runs_dir"]
    assert not (out.rstrip("/") + "/").startswith(logdir.rstrip("/") + "/"), (out, logdir)


@pytest.mark.parametrize("remote", [{"smoke_dir": "~/facenet-runs"}, {"smoke_dir": "~/facenet-runs/smoke"},
                                    {"runs_dir": "/runs", "smoke_dir": "/runs/.smoke"}])
def test_a_smoke_dir_inside_the_runs_dir_is_refused(tmp_path, remote):
    with pytest.raises(InventoryError, match="'remote.smoke_dir' .* TensorBoard reads runs_dir whole"):
        load_inventory(write(tmp_path, {"remote": remote}))
    with pytest.raises(InventoryError, match="'remote.project_dir' .* remote.smoke_dir"):
        load_inventory(write(tmp_path, {"remote": {"project_dir": "~/facenet-runs-smoke/code"}}))


def dash_i(*keys):
    """The Config `fab -i KEY ...` gives a task."""
    return Config(overrides={"connect_kwargs": {"key_filename": [str(k) for k in keys]}})


def test_a_public_key_or_a_folder_given_as_the_key_says_what_it_is(tmp_path, monkeypatch):
    monkeypatch.setenv("FACENET_STATE_DIR", str(tmp_path / "state"))
    inv = load_inventory(write(tmp_path, {}))
    private = key(tmp_path, "gpu")
    public = tmp_path / "gpu.pub"
    public.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKc8 me@laptop\n")
    for mode in (0o644, 0o600):  # chmod 600 changes nothing: it is still the public half
        public.chmod(mode)
        with pytest.raises(LocalInputError, match=rf"SSH key file {public} is a public key .*the private key beside it: -i {private}\b"):
            connect(Connection("ubuntu@198.51.100.7", config=dash_i(public)), inv)
    lone = tmp_path / "lone.pub"
    lone.write_text("ecdsa-sha2-nistp256 AAAAE2VjZHNh me@laptop\n")
    with pytest.raises(LocalInputError, match=rf"SSH key file {lone} is a public key .*its private key \(.*; not in {tmp_path}\)"):
        connect(Connection("ubuntu@198.51.100.7", config=dash_i(lone)), inv)
    with pytest.raises(LocalInputError, match=rf"SSH key file {tmp_path} is a folder, not a key file"):
        connect(Connection("ubuntu@198.51.100.7", config=dash_i(tmp_path)), inv)


def test_dash_h_naming_the_remembered_host_keeps_its_key(tmp_path, monkeypatch):
    """`fab -H ubuntu@IP:PORT -i key.pem deploy-full`, then `fab -H ubuntu@IP:PORT monitor`: the same key, remembered."""
    monkeypatch.setenv("FACENET_STATE_DIR", str(tmp_path / "state"))
    pem = key(tmp_path, "gpu.pem")
    inv = load_inventory(write(tmp_path, {}))
    remember_host(connect(Connection("ubuntu@198.51.100.7:2200", config=dash_i(pem)), inv))
    for given in ("ubuntu@198.51.100.7:2200", "198.51.100.7:2200", "198.51.100.7"):
        same = connect(Connection(given, config=Config()), inv)
        assert (same.conn.user, same.conn.port, same.conn.connect_kwargs.get("key_filename")) == ("ubuntu", 2200, [pem]), given
        assert same.describe() == f"ubuntu@198.51.100.7:2200, key {pem}"
    for other in ("admin@198.51.100.7:2200", "ubuntu@198.51.100.7:2201", "ubuntu@198.51.100.8:2200"):
        assert not connect(Connection(other, config=Config()), inv).conn.connect_kwargs.get("key_filename"), other
    own = key(tmp_path, "other.pem")
    assert key_files(connect(Connection("ubuntu@198.51.100.7:2200", config=dash_i(own)), inv).conn) == [own]  # -i wins


def test_a_dash_h_name_nobody_knows_is_refused_before_any_connection(tmp_path, monkeypatch):
    """Neither the inventory, an OpenSSH config nor the resolver knows the name: bad input (exit 2), not a network fault."""
    monkeypatch.setenv("FACENET_STATE_DIR", str(tmp_path / "state"))
    path = write(tmp_path, {"hosts": {"gpu": {"address": "10.0.0.5"}, "gpu2": {"address": "10.0.0.6"}},
                            "clusters": {"pair": {"hosts": ["gpu", "gpu2"]}}})
    inv = load_inventory(path)
    with pytest.raises(LocalInputError, match=rf"^no-such-host.invalid is not a host of {path} \(hosts: gpu, gpu2; clusters: pair\) "
                                              r"and does not resolve as an address: .*Name or service not known"):
        connect(Connection("ubuntu@no-such-host.invalid", config=Config()), inv)
    ssh_config = tmp_path / "ssh config"
    ssh_config.write_text("Host no-such-host.invalid\n    HostName 127.0.0.1\n    Port 2222\n"
                          "Host behind.invalid\n    ProxyJump bastion.example\n")
    by_inventory = load_inventory(write(tmp_path, {"ssh": {"config_file": str(ssh_config)}}))
    for config, named in ((Config(runtime_ssh_path=str(ssh_config)), inv), (Config(), by_inventory)):  # fab -S FILE; ssh.config_file
        aliased = connect(Connection("no-such-host.invalid", config=config), named)
        assert (aliased.conn.host, aliased.conn.port) == ("127.0.0.1", 2222)
        assert connect(Connection("behind.invalid", config=config), named).conn.host == "behind.invalid"  # its bastion resolves it


def test_a_local_data_entry_that_is_a_file_says_so(tmp_path):
    from deploy.host.sync import check_local_data

    clip = tmp_path / "1001_DFA_ANG_XX.npz"
    clip.write_bytes(b"")
    inv = load_inventory(write(tmp_path, {"local_data": [clip.name]}))
    with pytest.raises(LocalInputError, match=rf"Local data directory {clip} \(local_data in .*\) is a file, not a folder of "
                                              rf"feature files: list the folder that holds them \(e\.g\. {tmp_path}\)"):
        check_local_data(inv)


def test_preflight_names_a_missing_training_config_as_a_bad_input_not_as_data_that_would_not_train(tmp_path):
    from deploy.host import checks

    inv = load_inventory(write(tmp_path, {"train_config": "configs/no-such-config.yaml"}))
    with pytest.raises(LocalInputError, match="'train_config' names configs/no-such-config.yaml, which is not a file in this repo"):
        checks.preflight(Recorder(), inv, lambda line: None)
