"""Where a run lives in object storage, and its pointer: pure data, no boto3.

    where = parse_url("s3://my-bucket/facenet/runs")     # Where(bucket="my-bucket", prefix="facenet/runs/")
    where.run_prefix("r1")                               # "facenet/runs/r1/"
    pointer = new_pointer("r1", epoch=14, checkpoint=..., files={...}, ...)

A stored run, under s3://BUCKET/PREFIX/:

    RUN/LATEST                                   the pointer (JSON, below), written last
    RUN/checkpoints/EEEEEE-STAMP/<path in RUN>   the files a checkpoint uploaded (only those that changed)

A checkpoint uploads the run's files that changed since the previous one under a folder of its
own (never overwriting an object a pointer names), then rewrites LATEST, whose `files` maps
every file of the run at that epoch to its object. A reader that follows LATEST never sees a
torn checkpoint; objects no pointer names any more are deleted after the next pointer is written
(the previous pointer's stay, for a reader that read it a moment ago).

The pointer (POINTER_FORMAT 1):

    {"format": 1, "run": "r1", "epoch": 14, "state": "running", "final": false,
     "checkpoint": "checkpoints/000014-20261201T101500123Z/", "written_at": "2026-12-01T10:15:02+00:00",
     "host": "gpu1", "launch_id": "...", "run_started_at": "...",
     "files": {"backup/latest.weights.h5": {"key": "checkpoints/000014-.../backup/latest.weights.h5", "size": 1234, "md5": "..."}, ...},
     "summary": {"epoch": 14, "epochs": 50, "best": {...}, "metrics": {...}, "compute_seconds": 812.0,
                 "price_per_hour": 1.2, "cost_usd": 0.27, "exit": {...} or null, "updated_at": "..."}}

`state` is the run's (running, finished, stopped, failed, preempted, vanished); `final` is true
once the trainer has ended and its last files are stored (the uploader then exits). `key`s are
relative to the run's prefix.
"""

import re
from dataclasses import dataclass

from trainer.run_format import run_format

POINTER = "LATEST"
CHECKPOINTS = "checkpoints/"
POINTER_FORMAT = 1
BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")  # S3's bucket naming rules (the common subset)
RUN_NAME = run_format.RUN_NAME


class StorageUrlError(ValueError):
    """A storage URL that is not s3://bucket[/prefix]."""


@dataclass(frozen=True)
class Where:
    bucket: str
    prefix: str  # "" or ending in "/"

    @property
    def url(self):
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def run_prefix(self, run):
        return f"{self.prefix}{run}/"

    def run_url(self, run):
        return f"s3://{self.bucket}/{self.run_prefix(run)}".rstrip("/")


def parse_url(url):
    """`s3://bucket[/prefix]` as a Where; StorageUrlError saying what was expected."""
    if not isinstance(url, str) or not url.startswith("s3://"):
        raise StorageUrlError(f"expected s3://BUCKET or s3://BUCKET/PREFIX. Received: {url!r}")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not BUCKET.fullmatch(bucket) or ".." in bucket:
        raise StorageUrlError(f"expected s3://BUCKET/PREFIX with a bucket name of 3-63 lowercase letters, digits, '.' and '-'. "
                              f"Received: {url!r}")
    prefix = prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise StorageUrlError(f"expected a prefix of plain folder names (no '//', '.' or '..'). Received: {url!r}")
    return Where(bucket, prefix + "/" if prefix else "")


def split_run_url(url):
    """`s3://bucket/prefix/RUN` as (Where of the prefix, RUN); StorageUrlError when it names no run."""
    where = parse_url(url)
    parts = where.prefix.rstrip("/").split("/") if where.prefix else []
    if not parts or not RUN_NAME.fullmatch(parts[-1]):
        raise StorageUrlError(f"expected s3://BUCKET/PREFIX/RUN naming a stored run (as `fab runs` lists them). Received: {url!r}")
    return Where(where.bucket, "".join(p + "/" for p in parts[:-1])), parts[-1]


def checkpoint_folder(epoch, stamp):
    return f"{CHECKPOINTS}{int(epoch):06d}-{stamp}/"


def summary(status, metrics=None, exit_record=None, recoveries=None):
    """What `fab runs` shows of a run, from its status.json (and metrics.json, exit record, and recoveries.json: `fab watch`)."""
    status = status if isinstance(status, dict) else {}
    seconds, price = status.get("compute_seconds"), status.get("price_per_hour")
    cost = round(seconds / 3600 * price, 4) if isinstance(seconds, (int, float)) and isinstance(price, (int, float)) else None
    if isinstance(metrics, dict) and isinstance(metrics.get("compute"), dict) and metrics["compute"].get("cost_usd") is not None:
        cost = metrics["compute"]["cost_usd"]
    return {"epoch": status.get("epoch"), "epochs": status.get("epochs"), "best": status.get("best"), "metrics": status.get("metrics"),
            "compute_seconds": seconds, "price_per_hour": price, "cost_usd": cost, "exit": exit_record,
            "started_at": status.get("started_at"), "updated_at": status.get("updated_at"), "error": status.get("error"),
            "seconds_per_epoch": status.get("seconds_per_epoch"),
            "recoveries": (recoveries or {}).get("recoveries") if isinstance(recoveries, dict) else None}


def launch_order(launch_id):
    """A launch id (`20261206T120000Z-4242`: its UTC start, then its launcher's pid) as a key that sorts as the launches
    began: the start first, then the pid as a number (two launches in one second). Hosts' clocks are assumed in step
    (NTP, as on EC2): a clock ahead by more than the time between two launches would order them wrongly."""
    start, _, pid = str(launch_id or "").partition("-")
    return (start, int(pid) if pid.isdigit() else -1)


def new_pointer(run, epoch, checkpoint, files, state, final, written_at, host=None, launch_id=None, run_started_at=None,
                summary=None):
    return {"format": POINTER_FORMAT, "run": run, "epoch": epoch, "state": state, "final": final, "checkpoint": checkpoint,
            "written_at": written_at, "host": host, "launch_id": launch_id, "run_started_at": run_started_at,
            "files": files, "summary": summary or {}}


def check_pointer(pointer, where_from):
    """The pointer if it reads as POINTER_FORMAT (its fields of the right types, every file a plain relative path inside
    the run with a checkpoint object); ValueError naming `where_from` and what is wrong otherwise."""
    if not isinstance(pointer, dict) or pointer.get("format") != POINTER_FORMAT or not isinstance(pointer.get("files"), dict):
        raise ValueError(f"{where_from} is not a run pointer of format {POINTER_FORMAT} (written by another version?)")
    epoch = pointer.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"{where_from}: 'epoch' is {epoch!r}, not an epoch number")
    for key in ("written_at", "state"):
        if not isinstance(pointer.get(key), str) or not pointer[key]:
            raise ValueError(f"{where_from}: '{key}' is {pointer.get(key)!r}, not a text")
    for key in ("host", "launch_id", "run_started_at", "checkpoint"):
        if pointer.get(key) is not None and not isinstance(pointer[key], str):
            raise ValueError(f"{where_from}: '{key}' is {pointer[key]!r}, not a text")
    if pointer.get("summary") is not None and not isinstance(pointer["summary"], dict):
        raise ValueError(f"{where_from}: 'summary' is {pointer['summary']!r}, not a mapping")
    if not isinstance(pointer.get("final", False), bool):
        raise ValueError(f"{where_from}: 'final' is {pointer['final']!r}, not true or false")
    folders = {"/".join(rel.split("/")[:i]) for rel in pointer["files"] if isinstance(rel, str) for i in range(1, rel.count("/") + 1)}
    for rel, entry in pointer["files"].items():
        if (not plain_path(rel) or rel in folders or not isinstance(entry, dict) or not isinstance(entry.get("key"), str)
                or not entry["key"].startswith(CHECKPOINTS) or not plain_path(entry["key"])
                or not isinstance(entry.get("md5"), (str, type(None)))):
            raise ValueError(f"{where_from}: file entry {rel!r} is not a plain path inside the run (a file, not a folder of "
                             "others) with a checkpoint object")
    return pointer


def plain_path(rel):
    """A relative path of plain names: no '', '.' or '..' part, not absolute, no backslash."""
    return isinstance(rel, str) and bool(rel) and "\\" not in rel and all(part not in ("", ".", "..") for part in rel.split("/"))
