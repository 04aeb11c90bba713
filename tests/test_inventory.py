"""inventory.yaml loading and the choice of host: fast, no SSH."""

from pathlib import Path

import pytest
import yaml
from fabric import Config, Connection
from invoke import Context

from deploy.errors import InventoryError, LocalInputError
from deploy.hosts import connect, remember_host, rq
from deploy.inventory import REPO_ROOT, load_inventory


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
])
def test_bad_inventory_values_name_the_key(tmp_path, data, message):
    with pytest.raises(InventoryError) as err:
        load_inventory(write(tmp_path, data))
    assert message in str(err.value) and str(tmp_path) in str(err.value)


def test_a_missing_inventory_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("FACENET_INVENTORY", str(tmp_path / "nope.yaml"))
    with pytest.raises(InventoryError, match="nope.yaml does not exist.*FACENET_INVENTORY"):
        load_inventory()


def test_host_choice_is_dash_h_then_the_remembered_host_then_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("FACENET_STATE_DIR", str(tmp_path / "state"))
    inv = load_inventory(write(tmp_path, {"default_host": "a", "hosts": {
        "a": {"address": "10.0.0.1", "user": "ubuntu", "key_file": "/k/a.pem"},
        "b": {"address": "10.0.0.2", "user": "ec2-user", "port": 2222}}}))
    ctx = Context(config=Config())
    target = connect(ctx, inv)
    assert (target.label, target.conn.host, target.conn.user) == ("a", "10.0.0.1", "ubuntu")
    assert target.conn.connect_kwargs["key_filename"] == ["/k/a.pem"]
    remember_host("b")
    target = connect(ctx, inv)
    assert (target.label, target.conn.host, target.conn.port) == ("b", "10.0.0.2", 2222)
    given = connect(Connection("admin@10.0.0.1", config=Config()), inv)  # -H by address: the entry's key and port apply
    assert (given.label, given.conn.user, given.conn.connect_kwargs["key_filename"]) == ("a", "admin", ["/k/a.pem"])
    by_name = connect(Connection("b", config=Config()), inv)
    assert (by_name.conn.host, by_name.conn.user, by_name.conn.port, by_name.host_string) == ("10.0.0.2", "ec2-user", 2222, "b")
    other = connect(Connection("ubuntu@198.51.100.7:2200", config=Config()), inv)
    assert (other.conn.host, other.conn.port, other.conn.user) == ("198.51.100.7", 2200, "ubuntu")


def test_no_host_at_all_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FACENET_STATE_DIR", str(tmp_path / "state"))
    with pytest.raises(LocalInputError, match="No host to act on: pass -H user@address"):
        connect(Context(config=Config()), load_inventory(write(tmp_path, {})))


def test_remote_paths_are_single_shell_words_with_home_kept():
    assert rq("~/runs dir") == "\"$HOME\"/'runs dir'"
    assert rq("/srv/a b;rm -rf x") == "'/srv/a b;rm -rf x'"
    assert rq("~") == '"$HOME"'
