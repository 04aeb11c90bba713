"""A throwaway OpenSSH server on 127.0.0.1 that stands in for the GPU host (demo, tests, bench).

    with LocalSSHHost(Path(".facenet/demo/ssh")) as host:
        host.port, host.user, host.key_file       # for inventory.yaml
        host.log_text()                           # sshd's log: one "Accepted" line per connection

Runs the real /usr/sbin/sshd -D -e -f CONFIG at a free high port, with a host key and a user
key generated in `root`, accepting only that key for the current user.

Its commands run as on a new cloud host, whatever this account's ~/.bashrc holds: bash reads ~/.bashrc for a command
sent over SSH unless it is a nested shell, and Ubuntu's .bashrc returns at once when not interactive, where a
workstation's may start pyenv or conda (a tenth of a CPU-second and more for every command) or print text (which
breaks rsync). Each session gets SHLVL=1, so its login shell counts itself nested and skips ~/.bashrc.
"""

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def config_path(path):
    """A path as an sshd_config argument, double-quoted: a checkout path may hold spaces. A path holding a
    double quote, a newline or `%` (AuthorizedKeysFile expands %-tokens) cannot be written."""
    text = str(path)
    if any(c in text for c in '"\n%'):
        raise RuntimeError(f"sshd_config cannot hold the path {text!r} (it has a double quote, a newline or a %): "
                           "run from a folder whose path has none of them.")
    return f'"{text}"'


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSSHHost:
    """`user`: the account that logs in (default: this one); sshd, run by root, reads its
    authorized_keys file as that user, so `root` must then be readable by it."""

    def __init__(self, root, user=None, env=None):
        self.root = Path(root).resolve()
        # set in every session (the module docstring says why SHLVL), e.g. {"PATH": ...}, in one SetEnv line: sshd takes
        # the first alone
        self.env = {"SHLVL": "1", **(env or {})}
        for name, value in self.env.items():
            if any(c in str(value) for c in ' \t\n"\''):
                raise ValueError(f"LocalSSHHost: the session variable {name}={value!r} holds whitespace or a quote, "
                                 "which sshd_config's SetEnv cannot take")
        self.user = user or getpass.getuser()
        self.key_file = self.root / "id_ed25519"
        self.log_file = self.root / "sshd.log"
        self.port = None
        self.proc = None

    def start(self, timeout=15):
        if not Path(SSHD).exists():
            raise RuntimeError(f"{SSHD} not found: install openssh-server (make test installs it when run as root).")
        self.root.mkdir(parents=True, exist_ok=True)
        for name in ("host_key", "id_ed25519"):
            if not (self.root / name).exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"facenet-deploy-{name}", "-f", str(self.root / name)],
                               check=True)
        shutil.copyfile(self.root / "id_ed25519.pub", self.root / "authorized_keys")
        os.chmod(self.root / "authorized_keys", 0o600 if self.user == getpass.getuser() else 0o644)
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        self.port = self.port or free_port()  # started again (an outage ended): the same address
        config = self.root / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {config_path(self.root / 'host_key')}\n"
            f"PidFile {config_path(self.root / 'sshd.pid')}\nAuthorizedKeysFile {config_path(self.root / 'authorized_keys')}\n"
            f"AllowUsers {self.user}\n"
            "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nAllowTcpForwarding local\nX11Forwarding no\n"
            "MaxStartups 50\nMaxSessions 50\nLogLevel VERBOSE\nSubsystem sftp internal-sftp\n"
            "SetEnv " + " ".join(f"{name}={value}" for name, value in self.env.items()) + "\n"
        )
        self.log = open(self.log_file, "a")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with code {self.proc.returncode}: {self.log_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"sshd did not answer on 127.0.0.1:{self.port} within {timeout} s: {self.log_text()[-2000:]}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.proc:
            self.log.close()
        self.proc = None

    def log_text(self):
        return self.log_file.read_text() if self.log_file.exists() else ""

    def host_entry(self):
        """The inventory `hosts:` entry for this server."""
        return {"address": "127.0.0.1", "user": self.user, "port": self.port, "key_file": str(self.key_file)}

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def seed_venv(venv, site_packages):
    """A venv on the "host" that sees an existing environment's packages (a .pth file), so the
    demo and the tests exercise the real provision path (pip sees its requirements satisfied)
    without downloading TensorFlow a second time."""
    venv = Path(venv)
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    inner = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           check=True, capture_output=True, text=True).stdout.strip()
    Path(inner, "facenet-deploy-shared.pth").write_text(f"{site_packages}\n")
    return venv


def processes_under(root):
    """{pid: command line} of this machine's processes whose command line names a path under `root`
    (what a local "host" runs for it: trainer, launcher, host agent, TensorBoard), this one excluded.
    Never the tmux server: it is shared by every session of the user, and keeps the command line of
    the client that started it (a training's launch), so killing it would end every other training."""
    root, found = str(Path(root).resolve()), {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
            if (entry / "comm").read_text().startswith("tmux"):  # the user's one tmux server: its sessions are ended by name
                continue
        except OSError:
            continue
        text = " ".join(w.decode(errors="replace") for w in words if w)
        if root in text:
            found[int(entry.name)] = text
    return found


def end_host_processes(root, sessions=(), timeout=10, rounds=5):
    """End what a local "host" under `root` still runs: its tmux `sessions`, then every process whose
    command line names a path under `root` (SIGTERM, then SIGKILL after `timeout` s), scanning again
    until a scan finds nothing: a process started a moment before (an agent starting an uploader, a
    child between fork and exec, whose command line reads empty) is found by the next scan. Returns what
    it ended."""
    import signal

    ended = []
    for session in sessions:
        if subprocess.run(["tmux", "kill-session", "-t", f"={session}"], capture_output=True).returncode == 0:
            ended.append(f"tmux session {session}")
    seen = {}
    for _ in range(rounds):
        procs = {pid: text for pid, text in processes_under(root).items() if _alive(pid)}
        if not procs:
            break
        seen.update(procs)
        for pid in procs:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_alive(pid) for pid in procs):
            time.sleep(0.1)
        for pid in procs:
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.2)  # a process in exec at the scan shows its command line by the next
    return ended + [f"pid {pid} ({text[:120]})" for pid, text in seen.items()]


def _alive(pid):
    """`pid` runs and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
