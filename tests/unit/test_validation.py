import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support.helpers import run_trainer, write_clip
from trainer.config import DEFAULTS
from trainer.data import validation
from trainer.data.validation import REASONS, require_trainable, validate_dirs
from trainer.errors import DataError

DATA_CFG = DEFAULTS["data"]


def one(tmp_path, name="1001_IWL_ANG_XX.npz"):
    result = validate_dirs([tmp_path], DATA_CFG)
    (entry,) = [e for e in result.entries if e.path.endswith(name)]
    return entry


def test_valid_file_is_accepted_with_label_actor_frames(tmp_path):
    write_clip(tmp_path / "1001_IWL_ANG_XX.npz", frames=17)
    e = one(tmp_path)
    assert (e.status, e.emotion, e.actor, e.corpus, e.frames) == ("accepted", "ANG", "crema-d:1001", "crema-d", 17)


def test_other_numeric_dtypes_are_accepted(tmp_path):
    write_clip(tmp_path / "1001_IWL_ANG_XX.npz", value=np.ones((5, 512), np.float64))
    write_clip(tmp_path / "1002_IWL_ANG_XX.npz", value=np.ones((6, 512), np.int16))
    result = validate_dirs([tmp_path], DATA_CFG)
    assert [e.status for e in result.entries] == ["accepted", "accepted"]


def _corrupt(p):
    p.write_bytes(b"this is not a zip archive")


def _truncated(p):
    write_clip(p, frames=40)
    p.write_bytes(p.read_bytes()[:300])


def _bare_npy(p):
    with open(p, "wb") as f:
        np.save(f, np.ones((3, 512), np.float32))


BAD_FILES = {
    "corrupt-bytes": ("corrupt", _corrupt),
    "corrupt-truncated": ("corrupt", _truncated),
    "corrupt-bare-npy": ("corrupt", _bare_npy),
    "missing-key": ("missing-key", lambda p: write_clip(p, key="features")),
    "wrong-width": ("wrong-shape", lambda p: write_clip(p, dim=128)),
    "wrong-ndim": ("wrong-shape", lambda p: write_clip(p, value=np.ones(512, np.float32))),
    "wrong-dtype": ("wrong-shape", lambda p: write_clip(p, value=np.array([["a"] * 512]))),
    "structured-dtype": ("wrong-shape", lambda p: write_clip(p, value=np.zeros((4, 512), [("a", "<f4")]))),
    "empty": ("empty", lambda p: write_clip(p, value=np.zeros((0, 512), np.float32))),
    "nan": ("non-finite", lambda p: write_clip(p, value=np.full((4, 512), np.nan, np.float32))),
    "inf": ("non-finite", lambda p: write_clip(p, value=np.full((4, 512), np.inf, np.float32))),
    "object": ("object-array", lambda p: np.savez(p, video_features=np.array([np.ones(3), "x"], dtype=object))),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_each_malformed_file_is_rejected_with_its_reason(tmp_path, case):
    reason, make = BAD_FILES[case]
    make(tmp_path / "1001_IWL_ANG_XX.npz")
    e = one(tmp_path)
    assert (e.status, e.reason) == ("rejected", reason)
    assert e.detail


def test_a_text_file_named_npz_is_rejected_as_no_npz_archive_without_numpys_pickle_hint(tmp_path):
    (tmp_path / "1001_IWL_ANG_XX.npz").write_text("this is a text file, not features\n")
    e = one(tmp_path)
    assert (e.status, e.reason) == ("rejected", "corrupt")
    assert e.detail == "not an NPZ archive (a zip of .npy arrays): it starts with b'this is a text f'"
    assert str(tmp_path / "1001_IWL_ANG_XX.npz") in validation.most_common_problem([e])


def test_label_problems_are_rejected_before_reading(tmp_path):
    write_clip(tmp_path / "features_clip_7.npz")
    write_clip(tmp_path / "1001_IWL_XYZ_XX.npz")
    write_clip(tmp_path / "Actor_01" / "01-01-08-01-01-01-01.npz")
    reasons = {e.path.rsplit("/", 1)[1]: e.reason for e in validate_dirs([tmp_path], DATA_CFG).entries}
    assert reasons == {"features_clip_7.npz": "bad-name", "1001_IWL_XYZ_XX.npz": "unknown-label",
                       "01-01-08-01-01-01-01.npz": "unknown-label"}
    assert set(reasons.values()) <= set(REASONS)


def test_missing_key_message_names_the_keys_present_and_the_setting(tmp_path):
    for actor in range(1001, 1004):
        write_clip(tmp_path / f"{actor}_IWL_ANG_XX.npz", key="features")
    with pytest.raises(DataError) as err:
        require_trainable(validate_dirs([tmp_path], DATA_CFG), DATA_CFG["classes"])
    msg = str(err.value)
    assert str(tmp_path) in msg and "found 3 .npz files, 0 accepted" in msg
    assert "3 files have no key 'video_features'; they have keys ['features']: set data.feature_key." in msg


def test_empty_directory_and_missing_directory_are_errors(tmp_path):
    with pytest.raises(DataError, match="No .npz files found"):
        require_trainable(validate_dirs([tmp_path], DATA_CFG), DATA_CFG["classes"])
    with pytest.raises(DataError, match="does not exist"):
        validate_dirs([tmp_path / "nope"], DATA_CFG)


def test_an_unfinished_upload_in_a_data_dir_is_an_error_not_half_a_data_set(tmp_path):
    write_clip(tmp_path / "crema-d" / "1001_IWL_ANG_XX.npz")
    (tmp_path / "crema-d" / "sub" / ".rsync-partial").mkdir(parents=True)  # an interrupted `fab sync-data`'s partial files
    (tmp_path / "crema-d" / "sub" / ".rsync-partial" / "1002_IWL_SAD_XX.npz").write_bytes(b"PK\x03\x04 half")
    with pytest.raises(DataError, match=r"holds 1 file\(s\) of an unfinished upload in .*sub/\.rsync-partial .*fab sync-data"):
        validate_dirs([tmp_path / "crema-d"], DATA_CFG)
    (tmp_path / "crema-d" / "sub" / ".rsync-partial" / "1002_IWL_SAD_XX.npz").unlink()  # rsync removes the folder's files once done
    assert [e.emotion for e in validate_dirs([tmp_path / "crema-d"], DATA_CFG).entries] == ["ANG"]


def test_a_class_without_files_is_an_error_naming_it(tmp_path):
    for i, emotion in enumerate(["ANG", "DIS", "FEA", "HAP", "NEU"]):
        write_clip(tmp_path / f"{1001 + i}_IWL_{emotion}_XX.npz")
    with pytest.raises(DataError, match=r"\['SAD'\] have no valid file"):
        require_trainable(validate_dirs([tmp_path], DATA_CFG), DATA_CFG["classes"])


def test_second_run_reads_no_file_and_a_changed_file_is_read_again(tmp_path, monkeypatch):
    for i in range(5):
        write_clip(tmp_path / "d" / f"{1001 + i}_IWL_ANG_XX.npz", frames=5 + i)
    cache = tmp_path / "cache"
    first = validate_dirs([tmp_path / "d"], DATA_CFG, cache_dir=cache)
    reads = []
    real = validation.check_file
    monkeypatch.setattr(validation, "check_file", lambda *a: reads.append(a[0]) or real(*a))
    second = validate_dirs([tmp_path / "d"], DATA_CFG, cache_dir=cache)
    assert reads == [] and [e.frames for e in second.entries] == [e.frames for e in first.entries]
    write_clip(tmp_path / "d" / "1003_IWL_ANG_XX.npz", value=np.zeros((0, 512), np.float32))
    third = validate_dirs([tmp_path / "d"], DATA_CFG, cache_dir=cache)
    assert len(reads) == 1 and reads[0].endswith("1003_IWL_ANG_XX.npz")
    assert [e.reason for e in third.entries].count("empty") == 1


def test_the_cache_holds_only_the_files_its_data_folder_has_now_and_stale_caches_are_removed(tmp_path):
    for name in ("a", "b"):
        for i in range(3):
            write_clip(tmp_path / name / f"{1001 + i}_IWL_ANG_XX.npz")
    cache = tmp_path / "cache"
    (tmp_path / "cache.json").write_text("{}")  # the one unbounded cache file of earlier versions
    validate_dirs([tmp_path / "a"], DATA_CFG, cache_dir=cache)
    assert not (tmp_path / "cache.json").exists()
    stale = cache / "left-by-a-removed-dataset.json"
    stale.write_text("{}")
    os.utime(stale, (time.time() - 31 * 86400,) * 2)
    (tmp_path / "a" / "1002_IWL_ANG_XX.npz").unlink()
    validate_dirs([tmp_path / "a"], DATA_CFG, cache_dir=cache)
    validate_dirs([tmp_path / "b"], DATA_CFG, cache_dir=cache)
    used = next(f for f in cache.iterdir() if f != stale)  # a's or b's: validated again unchanged, it is kept
    os.utime(used, (time.time() - 20 * 86400,) * 2)
    validate_dirs([tmp_path / ("a" if "1002" not in used.read_text() else "b")], DATA_CFG, cache_dir=cache)
    assert used.stat().st_mtime > time.time() - 600
    files = {f.name: json.loads(f.read_text())["files"] for f in cache.iterdir()}
    assert sorted(sorted(Path(p).name for p in held) for held in files.values()) == [
        ["1001_IWL_ANG_XX.npz", "1002_IWL_ANG_XX.npz", "1003_IWL_ANG_XX.npz"], ["1001_IWL_ANG_XX.npz", "1003_IWL_ANG_XX.npz"]]
    assert stale.name not in files


def test_validate_cli_writes_a_manifest_and_exits_0(tmp_path, synth_crema):
    report = tmp_path / "manifest.json"
    proc = run_trainer("validate", "--data", synth_crema, "--report", report)
    assert proc.returncode == 0, proc.stderr
    assert "240 accepted" in proc.stdout and "Frames per clip" in proc.stdout
    files = json.loads(report.read_text())["files"]
    assert len(files) == 240 and {f["status"] for f in files} == {"accepted"}
    assert set(files[0]) >= {"path", "status", "reason", "emotion", "actor", "frames"}


def test_validate_cli_exits_2_with_the_reason_when_nothing_can_train(tmp_path):
    for actor in range(1001, 1004):
        write_clip(tmp_path / f"{actor}_IWL_ANG_XX.npz", key="features")
    proc = run_trainer("validate", "--data", tmp_path)
    assert proc.returncode == 2
    assert "have keys ['features']: set data.feature_key" in proc.stderr
    assert "missing-key" in proc.stdout  # the summary table still shows what was found


def test_the_cache_knows_a_file_by_any_spelling_and_a_cache_it_cannot_write_is_only_a_slower_run(tmp_path, monkeypatch):
    for i in range(3):
        write_clip(tmp_path / "d" / f"{1001 + i}_IWL_ANG_XX.npz")
    (tmp_path / "link").symlink_to(tmp_path / "d")
    cache = tmp_path / "cache"
    monkeypatch.chdir(tmp_path)
    validate_dirs(["d"], DATA_CFG, cache_dir=cache)
    reads = []
    real = validation.check_file
    monkeypatch.setattr(validation, "check_file", lambda *a: reads.append(a[0]) or real(*a))
    for spelling in (tmp_path / "d", "link", "d"):  # cross-validation's folds validate the resolved folder
        assert len(validate_dirs([spelling], DATA_CFG, cache_dir=cache).accepted) == 3
    assert reads == []
    (tmp_path / "a file").write_text("")
    unwritable = validate_dirs([tmp_path / "d"], DATA_CFG, cache_dir=tmp_path / "a file" / "cache")
    assert len(unwritable.accepted) == 3


@pytest.mark.parametrize("content", ["null", "[]", '{"version": 1, "files": []}', '{"version": 1, "files": {"x": 1}}', "gone"])
def test_a_cache_that_is_malformed_or_gone_when_read_is_only_a_slower_run(tmp_path, monkeypatch, content):
    for i in range(2):
        write_clip(tmp_path / "d" / f"{1001 + i}_IWL_ANG_XX.npz")
    cache = tmp_path / "cache"
    validate_dirs([tmp_path / "d"], DATA_CFG, cache_dir=cache)
    (held,) = cache.iterdir()
    if content == "gone":  # removed by another trainer between its check and its read
        real = Path.read_text
        monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: (_ for _ in ()).throw(FileNotFoundError(self))
                            if self == held else real(self, *a, **k))
    else:
        held.write_text(content)
    assert len(validate_dirs([tmp_path / "d"], DATA_CFG, cache_dir=cache).accepted) == 2


def test_a_file_replaced_or_removed_while_it_is_validated_is_not_cached(tmp_path, monkeypatch):
    """Its outcome belongs to the file that was read, not to what is there after: a file rewritten (rsync renames its
    new copy in) while it was read is read again next time; one gone after the listing is rejected, not a crash."""
    for i in range(3):
        write_clip(tmp_path / "d" / f"{1001 + i}_IWL_ANG_XX.npz")
    replaced, removed = tmp_path / "d" / "1001_IWL_ANG_XX.npz", tmp_path / "d" / "1002_IWL_ANG_XX.npz"
    real = validation.check_file

    def check_then_change(path, *args):
        outcome = real(path, *args)
        if path == str(replaced):
            replaced.write_bytes(b"not an npz any more")
        return outcome

    monkeypatch.setattr(validation, "check_file", check_then_change)
    listed = validation.find_files

    def list_then_remove(dirs):
        found = listed(dirs)
        removed.unlink(missing_ok=True)
        return found

    monkeypatch.setattr(validation, "find_files", list_then_remove)
    cache = tmp_path / "cache"
    first = {Path(e.path).name: e.reason for e in validate_dirs([tmp_path / "d"], DATA_CFG, cache_dir=cache).entries}
    assert first == {"1001_IWL_ANG_XX.npz": None, "1002_IWL_ANG_XX.npz": "corrupt", "1003_IWL_ANG_XX.npz": None}, first
    monkeypatch.setattr(validation, "check_file", real)
    second = {Path(e.path).name: e.reason for e in validate_dirs([tmp_path / "d"], DATA_CFG, cache_dir=cache).entries}
    assert second == {"1001_IWL_ANG_XX.npz": "corrupt", "1003_IWL_ANG_XX.npz": None}, second
