"""A newcomer's first hour, against the real local sshd: the login mistakes people make first are bad input
(exit 2) whose first line says the cause and whose next says the fix, not a network fault (exit 6)."""

import subprocess

import pytest

from tests.support.helpers import wait_until

pytestmark = [pytest.mark.ssh]


def keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def error_line(out):
    """The first line of the error `fab` printed."""
    return out.split("error: ", 1)[1].splitlines()[0]


@pytest.fixture
def bare(deploy_env, ssh_host, tmp_path):
    """deploy_env with no inventory host, an empty ~/.ssh (HOME) and no ssh-agent: only what a test gives is tried."""
    deploy_env.write(hosts={})
    deploy_env.home = tmp_path / "home"
    (deploy_env.home / ".ssh").mkdir(parents=True)
    deploy_env.env = {k: v for k, v in deploy_env.env.items() if k != "SSH_AUTH_SOCK"} | {"HOME": str(deploy_env.home)}
    deploy_env.target = f"{ssh_host.user}@127.0.0.1:{ssh_host.port}"
    return deploy_env


@pytest.fixture
def ssh_agent(tmp_path):
    """`add(key)` starts an ssh-agent (once) holding `key`; returns its socket."""
    started = []

    def add(key):
        sock = tmp_path / "agent.sock"
        if not started:
            started.append(subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL))
            wait_until(sock.exists, 10, "ssh-agent's socket")
        subprocess.run(["ssh-add", "-q", str(key)], env={"SSH_AUTH_SOCK": str(sock)}, check=True, capture_output=True)
        return str(sock)

    yield add
    for agent in started:
        agent.terminate()
        agent.wait(10)


def test_a_login_without_a_key_is_exit_2_saying_so_and_naming_dash_i(bare, ssh_host):
    none = bare.fab("-H", bare.target, "unlock")
    assert none.returncode == 2, none.out
    assert error_line(none.out) == (f"no SSH key to log in as {ssh_host.user!r} at 127.0.0.1:{ssh_host.port}: none given (-i, "
                                    "hosts.<name>.key_file), no ssh-agent, no ~/.ssh/id_rsa, id_ecdsa or id_ed25519.")
    assert "-i KEY" in none.out and "hosts.<name>.key_file in" in none.out
    assert "cannot reach" not in none.out and "No authentication methods" not in none.out


def test_a_refused_login_names_every_key_tried(bare, ssh_host, ssh_agent, tmp_path):
    """paramiko tries -i's key, then the ssh-agent's, then ~/.ssh/id_*: the message names each."""
    default = keygen(bare.home / ".ssh" / "id_ed25519")
    only_default = bare.fab("-H", bare.target, "unlock")
    assert only_default.returncode == 2, only_default.out
    assert error_line(only_default.out).startswith(f"the host refused the SSH login of user {ssh_host.user!r} at 127.0.0.1:"
                                                   f"{ssh_host.port}; keys tried: {default} (default).")
    bare.env["SSH_AUTH_SOCK"] = ssh_agent(keygen(tmp_path / "agent key"))
    given = keygen(tmp_path / "given key")
    refused = bare.fab("-H", bare.target, "-i", given, "unlock")
    assert refused.returncode == 2, refused.out
    assert f"; keys tried: {given} (given), 1 key of ssh-agent, {default} (default)." in error_line(refused.out), refused.out
    assert "-i KEY" in refused.out and "authorized_keys" in refused.out


def test_dash_h_naming_the_remembered_host_logs_in_with_its_key(bare, ssh_host, monkeypatch):
    """What deploy-full remembers (remember_host): the user, address, port and key file of the host."""
    from fabric import Config, Connection

    from deploy.host.connection import connect
    from deploy.host.remembered import remember_host
    from deploy.inventory import load_inventory

    monkeypatch.setenv("FACENET_STATE_DIR", bare.env["FACENET_STATE_DIR"])
    config = Config(overrides={"connect_kwargs": {"key_filename": [str(ssh_host.key_file)]}})
    remember_host(connect(Connection(bare.target, config=config), load_inventory(bare.root / "inventory.yaml")))
    again = bare.fab("-H", bare.target, "unlock")
    assert again.returncode == 0 and "The host was not locked." in again.out, again.out
    assert again.out.startswith(f"host: {bare.target}, key {ssh_host.key_file}\n"), again.out


def test_a_dash_h_name_nobody_knows_is_refused_before_connecting_and_an_ssh_config_alias_still_works(deploy_env, ssh_host, tmp_path):
    env = deploy_env
    unknown = env.fab("-H", "no-such-host.invalid", "monitor")
    assert unknown.returncode == 2, unknown.out
    assert error_line(unknown.out).startswith(f"no-such-host.invalid is not a host of {env.root / 'inventory.yaml'} (hosts: local) "
                                              "and does not resolve as an address: ")
    assert "host:" not in unknown.out and "cannot reach" not in unknown.out

    ssh_config = tmp_path / "ssh config"
    ssh_config.write_text(f"Host no-such-host.invalid\n    HostName 127.0.0.1\n    Port {ssh_host.port}\n    User {ssh_host.user}\n"
                          f"    IdentityFile {ssh_host.key_file}\n")
    by_dash_s = env.fab("-S", ssh_config, "-H", "no-such-host.invalid", "unlock")
    assert by_dash_s.returncode == 0 and "The host was not locked." in by_dash_s.out, by_dash_s.out
    env.write(ssh={"config_file": str(ssh_config)})
    by_inventory = env.fab("-H", "no-such-host.invalid", "unlock")
    assert by_inventory.returncode == 0 and "The host was not locked." in by_inventory.out, by_inventory.out


def test_a_changed_host_key_is_exit_2_and_says_what_to_do(deploy_env, ssh_host, tmp_path):
    env = deploy_env
    kind, key = keygen(tmp_path / "impostor").with_suffix(".pub").read_text().split()[:2]
    known = env.root / "state" / "known_hosts"  # where the first contact kept the host's key
    known.parent.mkdir(parents=True, exist_ok=True)
    known.write_text(f"[127.0.0.1]:{ssh_host.port} {kind} {key}\n")
    changed = env.fab("-H", "local", "unlock")
    assert changed.returncode == 2, changed.out
    assert "is not the one seen at first contact" in changed.out and "delete its line there" in changed.out


def test_chained_tasks_name_their_host_once(deploy_env):
    both = deploy_env.fab("-H", "local", "unlock", "unlock")
    assert both.returncode == 0 and both.out.count("The host was not locked.") == 2, both.out
    assert both.out.count("host: ") == 1 and both.out.startswith("host: local ("), both.out
