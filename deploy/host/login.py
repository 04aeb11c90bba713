"""The keys an SSH login uses, checked before it, and what to say when it comes to nothing.

    check_key_file("~/.ssh/gpu.pem")   # LocalInputError: a folder, a public key, missing, readable by others
    login_failure(conn, e)              # LoginFailed (exit 2) for paramiko's "no key to offer" or "refused", else None

paramiko offers the host, in this order (paramiko.SSHClient._auth): the key files given (`-i`,
hosts.<name>.key_file, an OpenSSH config's IdentityFile), every key of the ssh-agent, then the
~/.ssh/id_* files. A failed login names each of them, so "wrong key" and "no key" read as what they
are: bad input, not a network fault.
"""

import os
import re
import shlex
import stat
from pathlib import Path

import paramiko
from paramiko import AuthenticationException, SSHException

from deploy.errors import LocalInputError

PUBLIC_KEY = re.compile(rb"\s*(ssh-(rsa|dss|ed25519) |ecdsa-sha2-|sk-(ssh|ecdsa)-|---- BEGIN SSH2 PUBLIC KEY)")
NO_KEY = "No authentication methods available"  # paramiko's SSHException when it had nothing to offer
FIX_KEY = "-i KEY (the private key whose public half is in the host's authorized_keys; on EC2 the key pair's .pem)"


class LoginFailed(LocalInputError, AuthenticationException):
    """The host answered, but no login came of it: nothing to offer, or every key refused (exit 2). Still an
    AuthenticationException: a launch waiting for a new instance's SSH tries again (its key may not be in place yet)."""


def key_list(keys):
    """A key_filename setting (one path or several) as a list of distinct paths."""
    keys = keys or []
    return list(dict.fromkeys(str(k) for k in ([keys] if isinstance(keys, (str, os.PathLike)) else keys)))


def key_files(conn):
    """The key files `conn` offers before the agent's and the defaults."""
    return key_list(conn.connect_kwargs.get("key_filename"))


def check_key_file(path):
    """A key file the login can use: a private key file (not a folder, not the public half), that only its owner can
    read, as OpenSSH (rsync's transport) demands and paramiko does not: checked up front."""
    p = Path(os.path.expanduser(path))
    if p.is_dir():
        keys = sorted((pub.with_suffix("") for pub in p.glob("*.pub") if pub.with_suffix("").is_file()),
                      key=lambda k: (not k.name.startswith("id_"), k.name))  # a pair: a private key beside its .pub
        example = (f"e.g. -i {shlex.quote(str(keys[0]))}; private keys there: {', '.join(k.name for k in keys)}" if keys
                   else "such as ~/.ssh/id_ed25519, or an EC2 key pair's .pem")
        raise LocalInputError(f"SSH key file {p} is a folder, not a key file (from -i, hosts.<name>.key_file or the remembered host): "
                              f"name the private key file itself ({example}).")
    if not p.is_file():
        raise LocalInputError(f"SSH key file {p} does not exist (from -i, hosts.<name>.key_file or the remembered host).")
    try:
        with p.open("rb") as f:
            head = f.read(64)
    except OSError:
        head = b""
    if PUBLIC_KEY.match(head):
        private = p.with_suffix("") if p.suffix == ".pub" else None
        fix = (f"give the private key beside it: -i {shlex.quote(str(private))} (or hosts.<name>.key_file)" if private and private.is_file()
               else f"give its private key (usually of the same name without .pub; not in {p.parent})")
        raise LocalInputError(f"SSH key file {p} is a public key (the half that goes into the host's authorized_keys); the login "
                              f"needs the private one: {fix}.")
    mode = stat.S_IMODE(p.stat().st_mode)
    if mode & 0o077:
        raise LocalInputError(f"SSH key file {p} has mode {mode:04o}: OpenSSH, which rsync uses, refuses a private key that "
                              f"other users can read. Run: chmod 600 {shlex.quote(str(p))}")


def default_key_names():
    """The ~/.ssh/id_* names paramiko looks for (id_dsa only where it still reads DSA keys)."""
    return [f"id_{kind}" for kind in ("rsa", "dsa", "ecdsa", "ed25519") if kind != "dsa" or hasattr(paramiko, "DSSKey")]


def keys_offered(conn):
    """(given key files, the ssh-agent's key count or None when there is no agent, the ~/.ssh/id_* files): what paramiko
    offers `conn`'s host, in its order."""
    kwargs = conn.connect_kwargs
    agent = None
    if kwargs.get("allow_agent", True) and os.environ.get("SSH_AUTH_SOCK"):
        try:
            client = paramiko.Agent()
            agent = len(client.get_keys())
            client.close()
        except (SSHException, OSError):
            agent = None
    defaults = []
    if kwargs.get("look_for_keys", True):
        defaults = [path for name in default_key_names() for folder in (".ssh", "ssh")
                    if os.path.isfile(path := os.path.expanduser(f"~/{folder}/{name}"))]
    return key_files(conn), agent, defaults


def login_failure(conn, e):
    """A LoginFailed for paramiko's exception `e` when logging in to `conn` came to nothing, else None (`e` is
    another fault: the network, a host key). Its first line is the cause, its second the fix."""
    no_key = type(e) is SSHException and str(e) == NO_KEY
    if not no_key and not isinstance(e, AuthenticationException):
        return None
    where = f"{conn.user!r} at {conn.host}:{conn.port}"
    given, agent, defaults = keys_offered(conn)
    if no_key:
        names = default_key_names()
        nothing = ["none given (-i, hosts.<name>.key_file)", "no ssh-agent" if agent is None else "ssh-agent holds none"]
        if conn.connect_kwargs.get("look_for_keys", True):
            nothing.append(f"no ~/.ssh/{', '.join(names[:-1])} or {names[-1]}")
        return LoginFailed(f"no SSH key to log in as {where}: {', '.join(nothing)}.\n"
                           f"Add {FIX_KEY} to the command, or set hosts.<name>.key_file in the inventory; deploy-full remembers "
                           "the key for later commands.")
    tried = [f"{k} (given)" for k in given] + ([f"{agent} key{'s' * (agent != 1)} of ssh-agent"] if agent else [])
    tried += [f"{path} (default)" for path in defaults]
    detail = f" ({e})" if str(e) and str(e) != "Authentication failed." else ""  # e.g. the host takes passwords only
    return LoginFailed(f"the host refused the SSH login of user {where}; keys tried: {', '.join(tried) or 'none'}{detail}.\n"
                       "Check the user (-H user@host or hosts.<name>.user; on EC2 usually ubuntu) and the key: "
                       f"{FIX_KEY}, or hosts.<name>.key_file.")
