"""Where the laptop's side keeps things: the repository, and the state folder. A leaf: it imports nothing of the project.

    REPO_ROOT                    # the checkout: inventory.yaml, remote_scripts/, configs/
    state_dir()                  # $FACENET_STATE_DIR, else <repo>/.facenet: the remembered host, known_hosts,
                                 # launched.json, the watch's records, fetched runs
"""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def state_dir(create=True):
    """The state folder (created unless `create` is false: a reader that finds nothing needs no folder)."""
    path = Path(os.environ.get("FACENET_STATE_DIR") or REPO_ROOT / ".facenet")
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
