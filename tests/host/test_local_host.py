"""The throwaway sshd of the demo and the tests (deploy/demo/localhost.py) runs commands as a new cloud host does,
whatever this account's ~/.bashrc holds: one that prints would break rsync, one that starts pyenv or conda costs a
tenth of a CPU-second and more for every command of every task."""

import pwd
import shlex
import subprocess

import pytest

from deploy.demo.localhost import LocalSSHHost

pytestmark = pytest.mark.ssh

BASHRC = 'echo "from .bashrc"\nexport FROM_BASHRC=yes\n'


def ssh_args(host):
    return ["ssh", "-p", str(host.port), "-i", str(host.key_file), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]


def ssh(host, command):
    return subprocess.run([*ssh_args(host), f"{host.user}@127.0.0.1", command], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_commands_and_rsync_skip_a_bashrc_that_prints_and_a_session_that_asks_for_it_reads_it(tmp_path):
    with pytest.raises(ValueError, match="A='x y' holds whitespace"):  # sshd would refuse its config at start
        LocalSSHHost(tmp_path / "refused", env={"A": "x y"})
    home = tmp_path / "home"  # the account's home for these sessions: its .bashrc prints and exports
    home.mkdir()
    (home / ".bashrc").write_text(BASHRC)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "clip.npz").write_bytes(b"features")
    with LocalSSHHost(tmp_path / "sshd", env={"HOME": str(home)}) as host:
        out = ssh(host, 'echo "home=$HOME bashrc=${FROM_BASHRC:-no}"')
        assert (out.returncode, out.stdout) == (0, f"home={home} bashrc=no\n"), out
        copy = subprocess.run(["rsync", "-a", "-e", shlex.join(ssh_args(host)), f"{tmp_path}/data/", f"{host.user}@127.0.0.1:{tmp_path}/copy/"],
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert copy.returncode == 0, copy
        assert (tmp_path / "copy" / "clip.npz").read_bytes() == b"features"
    if not pwd.getpwnam(host.user).pw_shell.endswith("bash"):
        pytest.skip(f"{host.user}'s login shell is not bash: no ~/.bashrc to skip")
    with LocalSSHHost(tmp_path / "sshd", env={"HOME": str(home), "SHLVL": "0"}) as host:  # a top-level shell, as sshd's default
        out = ssh(host, 'echo "bashrc=${FROM_BASHRC:-no}"')
        assert out.stdout == "from .bashrc\nbashrc=yes\n", out  # what the sessions above were spared
