"""Remote paths and commands as the host's shell reads them.

    conn.run(f"ls {rq('~/facenet-runs')}")     # ls "$HOME"/facenet-runs
    rjoin(inv.remote["runs_dir"], run)       # ~/facenet-runs/<run>
    f"{PYTHON3} -c ..."                      # the host's system python3
"""

import shlex

# The host's system python3, for which the stdlib-only host scripts are written (`python3` on PATH where there is
# none): a user's shim on PATH (pyenv, asdf) would cost up to a second on every command that runs one.
PYTHON3 = '"$(command -v /usr/bin/python3 || command -v python3)"'


def rq(remote_path):
    """`remote_path` as one shell word for the remote shell; a leading `~/` still means home."""
    if remote_path == "~":
        return '"$HOME"'
    if remote_path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(remote_path[2:])
    return shlex.quote(remote_path)


def rjoin(*parts):
    return "/".join(p.rstrip("/") for p in parts)
