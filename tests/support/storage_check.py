"""What the storage tests read from moto's S3 (in this process: ThreadedMotoServer), beyond the S3 API:
every version of an object with its microsecond timestamp, so that "files first, pointer last" can be checked."""

import contextlib
import hashlib
import json
import urllib.request
import uuid

import boto3


def client(moto_url, key="testing"):
    return boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id=key, aws_secret_access_key="testing")


def new_bucket(moto_url):
    """A bucket of its own, versioned (each LATEST written stays readable as a version)."""
    name = f"runs-{uuid.uuid4().hex[:12]}"
    s3 = client(moto_url)
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def versions(bucket, key):
    """[(last_modified, FakeKey or FakeDeleteMarker)] of `key`, oldest first (moto's backend)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    store = s3_backends[DEFAULT_ACCOUNT_ID]["global"].buckets[bucket].keys
    return [(v.last_modified, v) for v in store.getlist(key, [])]


def pointers(bucket, run_prefix):
    """Every LATEST the run had, oldest first: [(when it was written, pointer)]."""
    return [(t, json.loads(v.value)) for t, v in versions(bucket, run_prefix + "LATEST") if hasattr(v, "value")]


def check_pointers_came_last(bucket, run_prefix):
    """For every LATEST the run had: each object it names was written before it (with the md5 it records) and not
    deleted before it. Returns the pointers' (epoch, state, final) in order."""
    seen = []
    history = pointers(bucket, run_prefix)
    assert history, f"no LATEST under {run_prefix}"
    for written, pointer in history:
        for rel, entry in pointer["files"].items():
            before = [v for t, v in versions(bucket, run_prefix + entry["key"]) if t < written]
            assert before, f"LATEST of epoch {pointer['epoch']} names {entry['key']} ({rel}), which was not there before it"
            assert hasattr(before[-1], "value"), f"{entry['key']} was deleted before the LATEST of epoch {pointer['epoch']} that names it"
            assert hashlib.md5(before[-1].value).hexdigest() == entry["md5"], f"{entry['key']} is not what LATEST records"
        seen.append((pointer["epoch"], pointer["state"], pointer["final"]))
    return seen


@contextlib.contextmanager
def refusing_unknown_keys(moto_url):
    """moto checks every request's credentials inside this block (a key it does not know: InvalidAccessKeyId)."""
    def auth(count):
        request = urllib.request.Request(f"{moto_url}/moto-api/reset-auth", data=str(count).encode(), method="POST",
                                         headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(request, timeout=10).read()

    auth(0)
    try:
        yield
    finally:
        auth("inf")


def seed_run(s3, bucket, prefix, run, extra=None, **changes):
    """A stored run written straight into the bucket (no training): its files (and `extra`, {path in the run: bytes})
    under one checkpoint, then its LATEST, a pointer of epoch 2 of 5 from host gpu1, with `changes` applied to the
    pointer (None deletes a key). Returns the pointer written."""
    base, checkpoint = f"{prefix}{run}/", "checkpoints/000002-20261130T040000000Z/"

    def put(rel, body):
        s3.put_object(Bucket=bucket, Key=base + checkpoint + rel, Body=body)
        return {"key": checkpoint + rel, "size": len(body), "md5": hashlib.md5(body).hexdigest()}

    files = {"status.json": put("status.json", b'{"epoch": 2, "epochs": 5, "state": "running"}'),
             "history.csv": put("history.csv", b"epoch,loss\n1,1.0\n2,0.9\n"),
             "backup/latest.weights.h5": put("backup/latest.weights.h5", b"weights 2"),
             "backup/state.json": put("backup/state.json", b"{}")}
    files.update({rel: put(rel, body) for rel, body in (extra or {}).items()})
    pointer = {"format": 1, "run": run, "epoch": 2, "state": "running", "final": False, "checkpoint": checkpoint,
               "written_at": "2026-11-30T04:00:00+00:00", "host": "gpu1", "launch_id": "L1", "run_started_at": "2026-11-30T03:50:00+00:00",
               "files": files, "summary": {"epoch": 2, "epochs": 5}}
    for key, value in changes.items():
        if value is None:
            pointer.pop(key, None)
        else:
            pointer[key] = value
    s3.put_object(Bucket=bucket, Key=base + "LATEST", Body=json.dumps(pointer).encode())
    return pointer


def stored_pointer(moto_url, bucket, run, prefix="runs"):
    """The run's LATEST in moto's S3 as a dict, or None before there is one."""
    import json

    try:
        return json.loads(client(moto_url).get_object(Bucket=bucket, Key=f"{prefix}/{run}/LATEST")["Body"].read())
    except Exception:  # noqa: BLE001 - not there yet
        return None
