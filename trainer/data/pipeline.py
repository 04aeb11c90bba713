"""From data directories to the generators of a run: validate, split, normalise, batch.

    prepared = prepare(cfg, ["data/crema-d"], run_dir)    # writes manifest, split, normalization
    prepared = load_prepared(cfg, run_dir)                 # the same, read back for resume/evaluate
    train_gen, val_gen = generators(cfg, prepared)
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path

from rich.progress import Progress
from rich.text import Text

from trainer.data.normalization import compute_stats, load_stats, save_stats
from trainer.data.split import make_split
from trainer.data.validation import entries_from_manifest, require_trainable, validate_dirs, write_manifest
from trainer.data.validation_cache import default_cache_dir
from trainer.errors import DataError
from trainer.results.report import make_console, print_validation_summary
from trainer.results.runfiles import check_run_paths
from trainer.run_format import run_format
from trainer.training.status import write_json_atomic


@dataclass
class Prepared:
    entries: dict  # path -> accepted Entry
    split: dict
    stats: dict


def validate_with_progress(dirs, data_cfg, console):
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("Validating feature files", total=None)
        result = validate_dirs(dirs, data_cfg, cache_dir=default_cache_dir(),
                               progress=lambda done, total: bar.update(task, completed=done, total=total))
    print_validation_summary(result, console)
    return result


def prepare(cfg, data_dirs, run_dir, console=None, test_actors=None):
    """Validate, split (test_actors: a cross-validation fold's test side), normalise; writes the run's data files."""
    console = console or make_console()
    result = validate_with_progress(data_dirs, cfg["data"], console)
    write_manifest(result, Path(run_dir) / run_format.MANIFEST)
    require_trainable(result, cfg["data"]["classes"])
    entries = [e for e in result.accepted if e.emotion in cfg["data"]["classes"]]
    entries = subsample(entries, cfg["data"]["max_clips"], cfg["seed"])
    split = make_split(entries, cfg["split"]["method"], cfg["split"]["val_fraction"], cfg["seed"], cfg["data"]["classes"],
                       test_fraction=cfg["split"]["test_fraction"], test_actors=test_actors)
    write_json_atomic(Path(run_dir) / run_format.SPLIT, split)
    console.print(f"Split ({split['method']}): " + ", ".join(
        f"{len(split[side])} {name} clips from {len(split[side + '_actors'])} actors"
        for side, name in (("train", "training"), ("val", "validation"), ("test", "test")) if split[side]))
    stats = compute_stats(split["train"], cfg["data"]["feature_key"])
    save_stats(stats, Path(run_dir) / run_format.NORMALIZATION)
    return Prepared({e.path: e for e in entries}, split, stats)


def load_prepared(run_dir, data_dirs=None, console=None):
    """The prepared data of a run, for resume/evaluate. `data_dirs`: where the run's data is now (a run
    continued on another host); each of the run's data dirs maps to the given dir of the same folder name."""
    run_dir = Path(run_dir)
    for name in (run_format.MANIFEST, run_format.SPLIT, run_format.NORMALIZATION):
        if not (run_dir / name).is_file():
            raise DataError(f"{run_dir} has no {name}: it is not a run directory, or its run failed before the data was ready.")
    check_run_paths(run_dir)  # before any path from these files is used, or printed into train.log
    if data_dirs:
        relocate(run_dir, data_dirs, console or make_console())
    split = json.loads((run_dir / run_format.SPLIT).read_text())
    entries = {e.path: e for e in entries_from_manifest(run_dir / run_format.MANIFEST)}
    missing = [p for p in split["train"] + split["val"] + split.get("test", []) if not Path(p).is_file()]
    if missing:
        raise DataError(f"{len(missing)} files of the split in {run_dir / 'split.json'} are gone, e.g. {missing[0]}. "
                        "Restore the data at the same paths, or start a new run.")
    return Prepared(entries, split, load_stats(run_dir / run_format.NORMALIZATION))


def relocate(run_dir, data_dirs, console):
    """Rewrite the paths in split.json and manifest.json from the run's data dirs to `data_dirs`, matched by
    folder name (the deploy uploads local_data/<name> to remote.data_dir/<name>). DataError if one has no match."""
    manifest = json.loads((run_dir / run_format.MANIFEST).read_text())
    new_by_name = {Path(d).name: str(Path(d).resolve()) for d in data_dirs}
    moves = {}
    for old in manifest["dirs"]:
        old = old.rstrip("/")
        if Path(old).name not in new_by_name:
            raise DataError(f"The run's data came from {old}; none of the --data dirs ({', '.join(map(str, data_dirs))}) is named "
                            f"{Path(old).name!r}, so its files cannot be found on this host.")
        if new_by_name[Path(old).name] != old:
            moves[old] = new_by_name[Path(old).name]
    if not moves:
        return

    def move(path):
        old = next((d for d in moves if path.startswith(d + "/")), None)
        return moves[old] + path[len(old):] if old else path

    split = json.loads((run_dir / run_format.SPLIT).read_text())
    for key in ("train", "val", "test"):
        split[key] = [move(p) for p in split.get(key, [])]
    manifest["dirs"] = [moves.get(d.rstrip("/"), d) for d in manifest["dirs"]]
    for record in manifest["files"]:
        record["path"] = move(record["path"])
    write_json_atomic(run_dir / run_format.SPLIT, split)
    write_json_atomic(run_dir / run_format.MANIFEST, manifest)
    for old, new in moves.items():
        console.print(Text(f"Data moved: {old} -> {new} (split.json and manifest.json updated)"))


def subsample(entries, max_clips, seed):
    """At most `max_clips` entries (0 = all), the same number per class as far as possible."""
    if not max_clips or len(entries) <= max_clips:
        return entries
    rng = random.Random(seed)
    by_class = {}
    for e in sorted(entries, key=lambda e: e.path):
        by_class.setdefault(e.emotion, []).append(e)
    for group in by_class.values():
        rng.shuffle(group)
    picked, i = [], 0
    while len(picked) < max_clips:  # round robin over classes
        for group in by_class.values():
            if i < len(group) and len(picked) < max_clips:
                picked.append(group[i])
        i += 1
    return picked


def make_generator(cfg, paths, entries, stats, shuffle, batch_size=None, **kwargs):
    from trainer.data.generator import FixedVideoFacenetGenerator

    data, index = cfg["data"], {c: i for i, c in enumerate(cfg["data"]["classes"])}
    return FixedVideoFacenetGenerator(
        paths, [index[entries[p].emotion] for p in paths], batch_size=batch_size or cfg["train"]["batch_size"], shuffle=shuffle,
        mean=stats["mean"], std=stats["std"], feature_key=data["feature_key"], max_frames=data["max_frames"],
        max_frames_mode=data["max_frames_mode"], cache_in_memory=data["cache_in_memory"],
        lengths=[entries[p].frames for p in paths], seed=cfg["seed"], feature_dim=data["feature_dim"], **kwargs,
    )


def generators(cfg, prepared, batch_size=None, packed_dir=None, console=None):
    """Training and validation PyDatasets; `batch_size` is the global batch (train.batch_size x replicas).
    `packed_dir`: the pack of `validate --pack`, used when it holds every clip of the split unchanged."""
    workers = cfg["train"]["workers"]
    packed = None
    if packed_dir:
        from trainer.data.packed import open_pack

        paths = [p for side in ("train", "val", "test") for p in prepared.split.get(side) or []]
        frames, where = open_pack(packed_dir, paths, cfg["data"]["feature_key"])
        if frames is None:
            (console or make_console()).print(f"Reading clips from their NPZ files: {where}", highlight=False)
        else:
            packed = (frames, where)
            (console or make_console()).print(f"Reading clips from the pack in {packed_dir} ({len(where)} clips)", highlight=False)
    train = make_generator(cfg, prepared.split["train"], prepared.entries, prepared.stats, True, batch_size, workers=workers, packed=packed)
    val = make_generator(cfg, prepared.split["val"], prepared.entries, prepared.stats, False, batch_size, workers=workers, packed=packed)
    return train, val
