"""boto3 for the run storage: one client per store, every failure as an error code.

    store = Store.open({"url": "s3://bucket/prefix", "endpoint_url": None, "region": None})
    store.runs()                          # ["r1", "r2"]: the runs under the prefix
    store.pointer("r1")                   # its LATEST (trainer/storage/layout.py), or None
    store.put("r1", "checkpoints/.../status.json", body, md5)
    download_run(store, "r1", dest, backup=False)     # the files LATEST names, into dest

Credentials: boto3's default chain (an EC2 instance role, the user's ~/.aws, AWS_* variables),
or, where the settings name a credentials_file (the inventory's `storage.credentials: laptop`),
the keys in that file. Timeouts are short and botocore retries a few times: the uploader has
its own retries, and a reader should fail fast with the reason.
"""

import base64
import hashlib
import json
import os
from pathlib import Path

from trainer.storage.layout import CHECKPOINTS, POINTER, check_pointer, parse_url


class StorageError(Exception):
    """A storage operation failed; `code` is S3's error code (AccessDenied, NoSuchBucket, ...) or the
    client's (EndpointConnectionError, NoCredentialsError, ...)."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def error_code(e):
    """(code, message) of a boto3/botocore exception, or of any other."""
    response = getattr(e, "response", None)
    if isinstance(response, dict) and response.get("Error"):
        err = response["Error"]
        code = err.get("Code") or str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?"))
        return str(code), str(err.get("Message") or e)[:300]
    return type(e).__name__, str(e)[:300]


def as_storage_error(e):
    return e if isinstance(e, StorageError) else StorageError(*error_code(e))


def md5_hex(data):
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class Store:
    """The runs under one s3://bucket/prefix."""

    def __init__(self, client, where):
        self.client, self.where = client, where

    @classmethod
    def open(cls, settings):
        """A Store from settings {url, endpoint_url, region, credentials_file}; StorageError when boto3 is missing or the
        credentials file cannot be read."""
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise StorageError("NoBoto3", "boto3 is not installed here (pip install boto3; `fab provision` installs it on "
                                          "the host when the inventory sets storage.url)") from None
        where = parse_url(settings["url"])
        keys = {}
        if settings.get("credentials_file"):
            try:
                creds = json.loads(Path(os.path.expanduser(settings["credentials_file"])).read_text())
                keys = {"aws_access_key_id": creds["access_key"], "aws_secret_access_key": creds["secret_key"],
                        "aws_session_token": creds.get("token")}
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise StorageError("CredentialsFile", f"cannot read {settings['credentials_file']}: {e}") from None
        config = Config(connect_timeout=settings.get("connect_timeout", 5), read_timeout=settings.get("read_timeout", 30),
                        retries={"mode": "standard", "max_attempts": 3}, signature_version="s3v4")
        try:  # boto3 reads its settings here: ProfileNotFound, InvalidRegionError, a malformed endpoint ... as codes
            client = boto3.session.Session().client("s3", endpoint_url=settings.get("endpoint_url") or None,
                                                    region_name=settings.get("region") or None, config=config, **keys)
        except Exception as e:  # noqa: BLE001 - botocore raises many kinds; each becomes a code
            raise as_storage_error(e) from None
        return cls(client, where)

    def key(self, run, rel):
        return self.where.run_prefix(run) + rel

    def _call(self, fn, **kwargs):
        try:
            return fn(Bucket=self.where.bucket, **kwargs)
        except Exception as e:  # noqa: BLE001 - botocore raises many kinds; each becomes a code
            raise as_storage_error(e) from None

    def runs(self):
        """The run names under the prefix (each a folder with objects in it), sorted."""
        names, token = [], None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self._call(self.client.list_objects_v2, Prefix=self.where.prefix, Delimiter="/", **extra)
            names += [p["Prefix"][len(self.where.prefix):].rstrip("/") for p in page.get("CommonPrefixes") or []]
            if not page.get("IsTruncated"):
                return sorted(names)
            token = page["NextContinuationToken"]

    def keys(self, run, under=CHECKPOINTS):
        """Every key (relative to the run's prefix) under `under`."""
        found, token, base = [], None, self.where.run_prefix(run)
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self._call(self.client.list_objects_v2, Prefix=base + under, **extra)
            found += [o["Key"][len(base):] for o in page.get("Contents") or []]
            if not page.get("IsTruncated"):
                return found
            token = page["NextContinuationToken"]

    def get(self, run, rel):
        """The object's bytes, or None when it does not exist."""
        try:
            return self._call(self.client.get_object, Key=self.key(run, rel))["Body"].read()
        except StorageError as e:
            if e.code in ("NoSuchKey", "404"):
                return None
            raise

    def read_json(self, run, rel):
        """(the object's JSON, its URL), or (None, its URL) when it does not exist; StorageError, ValueError naming it."""
        where = f"{self.where.run_url(run)}/{rel}"
        data = self.get(run, rel)
        if data is None:
            return None, where
        try:
            return json.loads(data), where
        except ValueError:
            raise ValueError(f"{where} is not JSON") from None

    def pointer(self, run):
        """The run's LATEST as a dict (checked: layout.check_pointer), None if the run has none; StorageError, ValueError."""
        pointer, where = self.read_json(run, POINTER)
        return None if pointer is None else check_pointer(pointer, where)

    def put(self, run, rel, body, md5=None):
        """Store `body` (bytes or a seekable file) at the run's `rel`; S3 checks it against `md5` (hex) on arrival."""
        extra = {"ContentMD5": base64.b64encode(bytes.fromhex(md5)).decode()} if md5 else {}
        self._call(self.client.put_object, Key=self.key(run, rel), Body=body, **extra)

    def put_pointer(self, run, pointer):
        data = json.dumps(pointer, indent=1).encode()
        self.put(run, POINTER, data, md5_hex(data))

    def delete(self, run, rels):
        for i in range(0, len(rels), 1000):
            batch = [{"Key": self.key(run, rel)} for rel in rels[i:i + 1000]]
            self._call(self.client.delete_objects, Delete={"Objects": batch, "Quiet": True})

    def download(self, run, rel, path, md5=None):
        """The object at the run's `rel` into `path`: into a temp file beside it, checked against `md5` (hex) when given,
        and only then renamed over `path` (a failed check leaves `path` as it was: StorageError ChecksumMismatch).
        Returns its md5 (hex)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.download.tmp")
        digest = hashlib.md5(usedforsecurity=False)
        body = self._call(self.client.get_object, Key=self.key(run, rel))["Body"]
        try:
            with open(tmp, "wb") as f:
                try:
                    for chunk in iter(lambda: body.read(1 << 20), b""):
                        digest.update(chunk)
                        f.write(chunk)
                except Exception as e:  # noqa: BLE001 - the connection dropped mid-object (botocore's kinds): a code
                    raise as_storage_error(e) from None
            if md5 and digest.hexdigest() != md5:
                raise StorageError("ChecksumMismatch", f"{rel} does not match the md5 its pointer records (the object was "
                                                       "damaged or replaced); the local copy was left as it was")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return digest.hexdigest()


def download_run(store, run, dest, backup=False, pointer=None, say=None):
    """The files of `run`'s LATEST (backup/ only with `backup`) into the folder `dest`, each checked against its md5.
    With `backup`, local backup/ files that LATEST does not name are removed (a stale backup must not mix in).
    Returns (pointer, files written). StorageError, ValueError (no pointer, a bad one)."""
    pointer = pointer or store.pointer(run)
    if pointer is None:
        raise ValueError(f"{store.where.run_url(run)} holds no {POINTER}: no run stored there")
    dest = Path(dest)
    written = 0
    wanted = {rel: e for rel, e in pointer["files"].items() if backup or not _in_backup(rel)}
    for rel, entry in sorted(wanted.items()):
        path = dest / rel
        if path.is_file() and entry.get("md5") and _file_md5(path) == entry["md5"]:
            continue
        store.download(run, entry["key"], path, md5=entry.get("md5"))
        written += 1
    if backup:
        for stale in (p for p in (dest / "backup").rglob("*") if p.is_file()) if (dest / "backup").is_dir() else ():
            if str(stale.relative_to(dest)) not in pointer["files"]:
                stale.unlink()
    return pointer, written


def _in_backup(rel):
    return rel.startswith("backup/") or "/backup/" in rel


def _file_md5(path):
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
