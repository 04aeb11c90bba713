"""The training config as the host reads it: this machine's copy, sent once per content.

    config = send_config(conn, inv, inv.train_config)   # runs_dir/.configs/full-<hash>.yaml on the host
    config_summary(inv.train_config)                   # "configs/full.yaml (train.epochs 150)", for the start line
"""

import hashlib
import shlex
from pathlib import Path

import yaml

from deploy.errors import DeployError, LocalInputError
from deploy.host.quoting import rjoin, rq
from deploy.paths import REPO_ROOT


def remote_config(inv, path):
    """A config path of the inventory as the host sees it (relative paths are in the project dir)."""
    return path if path.startswith(("/", "~/")) else rjoin(inv.remote["project_dir"], path)


def local_config(path):
    """This machine's copy of an inventory config path (relative paths are in the repo), or None when it has none."""
    local = Path(path).expanduser() if path.startswith(("/", "~/")) else REPO_ROOT / path
    return local if local.is_file() else None


CONFIG_CHUNK = 60_000  # characters of a config per command (a shell argument holds at most 128 KiB)


def send_config(conn, inv, path, key="train_config"):
    """The config `path` (inventory `key`) as the host will read it: this machine's copy, sent to
    runs_dir/.configs/STEM-HASH.yaml, so that preflight, the smoke test and `train` use the config as it is here,
    whatever the host's synced copy holds. An absolute path this machine does not have is the host's own."""
    local = local_config(path)
    if local is None:
        if path.startswith(("/", "~/")):
            return remote_config(inv, path)
        raise LocalInputError(f"Inventory key {key!r} names {path}, which is not a file in this repo: expected a YAML config "
                              "such as configs/full.yaml (relative paths are in the repo).")
    text = local.read_bytes()
    try:
        body = text.decode()
    except UnicodeDecodeError:
        raise LocalInputError(f"The config {local} (inventory {key!r}) is not UTF-8 text: expected a YAML config.") from None
    folder = rjoin(inv.remote["runs_dir"], ".configs")
    sent = rjoin(folder, f"{local.stem}-{hashlib.sha256(text).hexdigest()[:12]}.yaml")
    part = rq(sent + ".part")
    chunks = [body[i:i + CONFIG_CHUNK] for i in range(0, len(body), CONFIG_CHUNK)] or [""]  # a shell argument holds 128 KiB
    for n, chunk in enumerate(chunks):
        write = f"printf %s {shlex.quote(chunk)} {'>' if n == 0 else '>>'} {part}"
        cmd = f"test -e {rq(sent)} || {{ mkdir -p {rq(folder)} && {write}; }}" if n == 0 else f"test -e {rq(sent)} || {write}"
        if n == len(chunks) - 1:
            cmd += f" && {{ test -e {rq(sent)} || mv -f {part} {rq(sent)}; }}"
        out = conn.run(cmd, hide=True, warn=True, in_stream=False)
        if out.failed:
            raise DeployError(f"Could not send the config {path} to the host ({sent}): {(out.stderr or out.stdout).strip()[-400:]}")
    return sent


def config_summary(path):
    """'configs/full.yaml (train.epochs 150)': the config as this machine has it, for the line that starts a run."""
    local = local_config(path)
    try:
        epochs = ((yaml.safe_load(local.read_text()) or {}).get("train") or {}).get("epochs") if local else None
    except (OSError, yaml.YAMLError, AttributeError):
        epochs = None
    return f"{path}" + (f" (train.epochs {epochs})" if epochs is not None else "") + ("" if local else " (the host's own copy)")
