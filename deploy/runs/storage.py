"""Run storage from the laptop: the uploader's settings, `fab runs`, fetch and resume from storage.

    settings = launch_settings(conn, inv, label, tf_config, say)   # None when storage is off (or not the chief)
    store = open_store(inv)                          # LocalInputError when storage is off or boto3 is missing
    rows = stored_runs(store)                        # [(name, pointer or None, problem or None)]
    local, pointer = fetch_run(inv, run, dest, say, backup=False)       # DEST/<host>/<run>, from storage
    path = resume_source(inv, "s3://bucket/prefix/r1")                   # downloaded once, with its backup (.facenet/resume/)

The host stores its runs itself (trainer/storage/uploader.py, started by launch_training.sh);
the laptop only reads, with its own credentials (boto3's default chain). The laptop's keys go to
the host only with `storage.credentials: laptop` in the inventory: then into one file on the host,
RUNS_DIR/.storage/credentials.json, readable by its user alone.
"""

import io
import json
from pathlib import Path

from deploy.errors import DeployError, LocalInputError
from deploy.host.quoting import rjoin, rq
from deploy.paths import state_dir
from deploy.recovery.machine import failure_reason
from trainer.run_format import run_format
from trainer.storage.layout import RUN_NAME, StorageUrlError, parse_url, split_run_url

RESUMED = {}  # resume_source's downloads, once per command: (url, run) -> local folder


def enabled(inv):
    return bool((getattr(inv, "storage", None) or {}).get("url"))


def settings(inv, url=None):
    """The store's settings as trainer/storage/s3.py Store.open takes them."""
    s = inv.storage
    return {"url": url or s["url"], "endpoint_url": s["endpoint_url"], "region": s["region"]}


def open_store(inv, url=None):
    """The Store of the inventory's storage.url (or `url`); LocalInputError when there is none or boto3 is missing."""
    from trainer.storage.s3 import StorageError, Store

    if not url and not enabled(inv):
        raise LocalInputError(f"No run storage: set storage.url in {inv.path} (e.g. s3://my-bucket/facenet-runs; see "
                              "docs/run-storage.md).")
    try:
        return Store.open(settings(inv, url))
    except StorageError as e:
        raise LocalInputError(f"Run storage {url or inv.storage['url']} cannot be opened here: {e.code}: {e.message}. "
                              f"{hint(e.code, inv)}") from None


def failure(e, store, doing, inv=None):
    """A DeployError for a storage call that failed, naming the store, the code and the setting to check."""
    return DeployError(f"{doing} in {store.where.url} failed: {e.code}: {e.message}. {hint(e.code, inv)}")


CREDENTIAL_CODES = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError", "InvalidAccessKeyId",
                    "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "ExpiredTokenException", "InvalidToken",
                    "InvalidClientTokenId", "TokenRefreshRequired", "CredentialsFile", "403"}
NETWORK_CODES = {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ReadTimeoutError", "ConnectionError",
                 "ProxyConnectionError", "SSLError", "ResponseStreamingError", "IncompleteReadError", "InvalidEndpoint",
                 "ValueError", "UnknownEndpointError"}


def hint(code, inv=None):
    """What to check for a storage error `code`: the setting that names it (storage.region, AWS_PROFILE, ...)."""
    where = f" in {inv.path}" if inv is not None else ""
    if code in ("ProfileNotFound", "ConfigNotFound", "ConfigParseError"):
        return ("Check AWS_PROFILE / AWS_DEFAULT_PROFILE in this shell: boto3 looks the profile up in ~/.aws/config and "
                "~/.aws/credentials (unset it to use the default profile).")
    if code in ("InvalidRegionError", "NoRegionError", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException",
                "PermanentRedirect"):
        return (f"Check storage.region{where} (the bucket's region, e.g. eu-west-1; `auto` for R2), else AWS_DEFAULT_REGION "
                "or the profile's region.")
    if code in NETWORK_CODES:
        return (f"Check storage.endpoint_url{where} (unset: AWS's own endpoint) and this machine's network: nobody answered "
                "there in time.")
    if code in CREDENTIAL_CODES:
        return ("Check this machine's AWS credentials (boto3's chain: AWS_PROFILE, ~/.aws/credentials, AWS_ACCESS_KEY_ID ...) "
                "and that they may read the prefix.")
    if code in ("NoSuchBucket", "InvalidBucketName"):
        return f"Check storage.url{where}: its bucket does not exist at this endpoint (storage.endpoint_url, storage.region)."
    if code in ("NoSuchKey", "404", "ChecksumMismatch"):
        return ("The stored run changed while it was read (a newer checkpoint replaced it) or an object of it is damaged: "
                "try again; `fab runs` shows the run's state.")
    return f"Check storage.url, storage.endpoint_url and storage.region{where}, and this machine's AWS credentials."


def launch_settings(conn, inv, label, tf_config=None, say=print):
    """The uploader's settings for a launch on `label` (None when storage is off, or on a worker that is not the chief:
    the chief writes the run's files). With storage.credentials: laptop, this machine's credentials go to the host first."""
    if not enabled(inv):
        return None
    if tf_config and json.loads(tf_config).get("task", {}).get("index", 0) != 0:
        return None
    found = {**settings(inv), "host": label}
    if inv.storage["credentials"] == "laptop":
        found["credentials_file"] = send_credentials(conn, inv)
        say(f"storage: {inv.storage['url']}, with this machine's AWS credentials (storage.credentials: laptop)")
    else:
        say(f"storage: {inv.storage['url']}, with the host's own AWS credentials (an instance role, its ~/.aws)")
    return found


def send_credentials(conn, inv):
    """This machine's AWS credentials (boto3's chain) into RUNS_DIR/.storage/credentials.json on the host, mode 0600; its path."""
    try:
        import boto3
    except ImportError:
        raise LocalInputError("storage.credentials: laptop needs boto3 here: pip install -e '.[aws]'.") from None
    creds = boto3.session.Session().get_credentials()
    if creds is None:
        raise LocalInputError(f"storage.credentials: laptop in {inv.path}, but this machine has no AWS credentials (boto3 found none: "
                              "AWS_PROFILE, ~/.aws/credentials, AWS_ACCESS_KEY_ID ...).")
    frozen = creds.get_frozen_credentials()
    data = json.dumps({"access_key": frozen.access_key, "secret_key": frozen.secret_key, "token": frozen.token})
    folder = rjoin(inv.remote["runs_dir"], ".storage")
    path, tmp = rjoin(folder, "credentials.json"), rjoin(folder, run_format.temp_name("credentials.json"))
    out = conn.run(f"umask 077 && mkdir -p {rq(folder)} && cat > {rq(tmp)} && mv {rq(tmp)} {rq(path)}",
                   hide=True, warn=True, in_stream=io.StringIO(data))
    if out.failed:
        raise DeployError(f"Could not write the storage credentials on the host ({path}): {(out.stderr or out.stdout).strip()[-300:]}")
    return path


# --- reading runs -----------------------------------------------------------------------------

def stored_runs(store):
    """[(run name, pointer or None, problem or None)] of every run under the store's prefix (not a run a sweep has only
    queued: a claim and no pointer)."""
    from trainer.storage.claims import CLAIM
    from trainer.storage.s3 import StorageError

    try:
        names = store.runs()
    except StorageError as e:
        raise failure(e, store, "Listing the runs") from None
    rows = []
    for name in names:
        if not RUN_NAME.fullmatch(name):
            continue  # not a run folder of ours
        try:
            pointer = store.pointer(name)
            if pointer is None and store.get(name, CLAIM) is not None:
                continue  # queued by a sweep (its claim: trainer/storage/claims.py), not started yet: nothing stored
            rows.append((name, pointer, None))
        except StorageError as e:
            rows.append((name, None, f"{e.code}: {e.message}"))
        except ValueError as e:
            rows.append((name, None, str(e)))
    return rows


def find_run(store, run):
    """The run's pointer; LocalInputError when storage has no such run."""
    from trainer.storage.s3 import StorageError

    try:
        pointer = store.pointer(run)
    except StorageError as e:
        raise failure(e, store, f"Reading run {run}") from None
    except ValueError as e:
        raise DeployError(str(e)) from None
    if pointer is None:
        raise LocalInputError(f"No run {run} in {store.where.url} (`fab runs` lists what is there).")
    return pointer


def fetch_run(inv, run, dest, say, backup=False, url=None):
    """Download run `run` from storage into DEST/<its host>/<run>/; returns (local folder, pointer)."""
    from trainer.storage.s3 import StorageError, download_run

    store = open_store(inv, url)
    pointer = find_run(store, run)
    root = Path(dest).resolve()
    local = (root / safe_name(pointer.get("host") or "storage") / run).resolve()
    if not local.is_relative_to(root) or local == root:
        raise DeployError(f"Refusing to write the run {run!r} outside {root}.")
    try:
        pointer, written = download_run(store, run, local, backup=backup, pointer=pointer)
    except StorageError as e:
        raise failure(e, store, f"Downloading run {run}", inv) from None
    except ValueError as e:
        raise DeployError(str(e)) from None
    except OSError as e:  # a full disk, a folder not ours
        raise DeployError(f"Downloading run {run} into {local} failed: {e}") from None
    say(f"Fetched run {run} from storage {store.where.run_url(run)} (epoch {pointer['epoch']}, {pointer['state']}"
        f"{', final' if pointer.get('final') else ''}, stored {pointer['written_at']}{', with its backup' if backup else ''}): "
        f"{written} file(s) updated in {local}")
    return local, pointer


def safe_name(name):
    safe = "".join(ch if ch.isalnum() or ch in "-_.@" else "_" for ch in str(name))
    return "_" + safe if safe.startswith(".") else safe


def is_storage_ref(inv, resume_from):
    """--resume-from names a stored run: an s3:// URL, or a bare run name that is no local folder (with storage on)."""
    text = str(resume_from)
    return text.startswith("s3://") or (enabled(inv) and "/" not in text and not Path(text).exists() and bool(RUN_NAME.fullmatch(text)))


def resume_source(inv, resume_from, dest=None, say=print, refresh=False):
    """The local folder to continue a run from: `resume_from` itself, or (s3://.../RUN, or a run name in storage)
    the stored run downloaded with its backup into DEST/<host>/<run> (DEST: the state dir's resume/, .facenet/resume/
    by default: a copy to upload, not results). Downloaded once per process (deploy-full asks before connecting and
    again in its body) unless `refresh`: a caller that resumes the same run again later (a recovery) passes it."""
    if not is_storage_ref(inv, resume_from):
        return Path(resume_from)
    text = str(resume_from)
    try:
        where, run = split_run_url(text) if text.startswith("s3://") else (parse_url(inv.storage["url"]), text)
    except StorageUrlError as e:
        raise LocalInputError(f"--resume-from: {e}") from None
    if refresh or (where.url, run) not in RESUMED:
        local, pointer = fetch_run(inv, run, dest or state_dir() / "resume", say, backup=True, url=where.url)
        if pointer.get("state") == "finished":
            raise LocalInputError(f"--resume-from {text}: that run finished (stored at {pointer['written_at']}); there is nothing "
                                  "to continue. `fab fetch-results --run` brings its results.")
        ended = ended_note(pointer)
        if ended:
            say(f"note: run {run} {ended} at epoch {pointer['epoch']}; continuing it as asked (--resume-from). `fab watch` "
                "never restarts such a run by itself.")
        RESUMED[(where.url, run)] = local
    return RESUMED[(where.url, run)]


def ended_note(pointer):
    """'failed on its own (exit code 137: ...)' or 'was stopped on request (fab stop)' for a stored run that ended by itself
    but may be continued on purpose; '' otherwise."""
    summary = pointer.get("summary") if isinstance(pointer.get("summary"), dict) else {}
    record = summary.get("exit") if isinstance(summary.get("exit"), dict) else {}
    if pointer.get("state") == "failed":
        return f"failed on its own ({failure_reason({'exit': record})})"
    if pointer.get("state") == "stopped" and isinstance(record.get("requested"), dict):
        return f"was stopped on request ({record['requested'].get('by') or 'fab stop'})"
    return ""
