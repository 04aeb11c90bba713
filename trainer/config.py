"""Run configuration: plain data with defaults here, overridden by a YAML file and `--set`.

    cfg = load_config("configs/full.yaml", overrides=["train.epochs=5"])
    cfg["model"]["encoder"]  # "bilstm"

Every key must be known and every value of the expected type; anything else is a
`ConfigError` naming the key. The resolved configuration is saved with each run.
"""

import copy
import re
from pathlib import Path

import yaml

from trainer.errors import ConfigError

CREMA_D_EMOTIONS = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]

# Every hyperparameter, with its default and meaning: a config file (configs/full.yaml) holds only
# what differs, `--set key=value` overrides one, and each run saves the resolved values.
DEFAULTS = {
    "seed": 42,
    "data": {
        "feature_key": "video_features",  # NPZ key of the (frames, 512) FaceNet features
        "feature_dim": 512,
        # Clips longer than this are cut to max_frames: "crop" keeps the centre,
        # "subsample" keeps evenly spaced frames over the whole clip. 0 = no cap.
        "max_frames": 300,
        "max_frames_mode": "crop",
        "cache_in_memory": True,  # decode each clip once and keep it in RAM (~1 GB for CREMA-D)
        # Use at most this many clips, balanced over classes (0 = all): for quick checks.
        "max_clips": 0,
        "classes": list(CREMA_D_EMOTIONS),
        # File label -> class; null excludes the label (its files are reported, not trained on).
        "label_map": {
            "crema_d": {e: e for e in CREMA_D_EMOTIONS},
            "ravdess": {
                "01": "NEU", "02": "NEU", "03": "HAP", "04": "SAD",
                "05": "ANG", "06": "FEA", "07": "DIS", "08": None,
            },
        },
    },
    # actor: no actor in two splits; random: leaks identity. test_fraction: actors held out from training
    # and from model selection, scored once at the end (the headline number); 0 turns the test split off.
    "split": {"method": "actor", "val_fraction": 0.2, "test_fraction": 0.15},
    "model": {
        "encoder": "bilstm",  # bilstm or transformer
        "units": 128,
        "layers": 1,
        "heads": 4,  # transformer only
        "dropout": 0.3,
        "head_units": 128,
    },
    "train": {
        "batch_size": 32,  # per replica: the global batch is this x the number of GPUs used
        "epochs": 60,
        "optimizer": "adam",  # adam, adamw or sgd
        "learning_rate": 1e-3,
        "weight_decay": 0.0,  # adamw only
        "patience": 10,  # EarlyStopping: epochs without improvement of `monitor`
        "lr_patience": 4,  # ReduceLROnPlateau
        "lr_factor": 0.5,
        "min_lr": 1e-6,
        "monitor": "val_uar",  # val_uar, val_accuracy or val_loss: picks best.keras
        "class_weights": "balanced",  # balanced or none
        "mixed_precision": "auto",  # auto: mixed_float16 on a GPU, float32 on the CPU
        "workers": 2,
        # training (and evaluation) steps run in one call on the device, as model.fit's steps_per_execution:
        # on a GPU the host's work per call, not the GPU, sets the pace of a small model; 4-16 amortise it.
        # The status heartbeat and the watchdog of a cluster are reset once per call. At most
        # MAX_STEPS_PER_EXECUTION: the K steps are unrolled into one graph, whose optimisation grows with K.
        "steps_per_execution": 1,
        # auto: the cluster when TF_CONFIG is set (MultiWorkerMirroredStrategy), else every GPU of the
        # host when there are several (MirroredStrategy), else one device; mirrored: MirroredStrategy
        # always; multi_worker: the TF_CONFIG cluster, required; off: one device. batch_size is per
        # replica: the global batch is batch_size x replicas (GPUs of every worker).
        "distribute": "auto",
        # multi_worker: seconds a worker may wait for its peers (to join, or to end a call of K training steps)
        # before the run fails (PeerLost), instead of hanging on a worker that froze or lost its network; the
        # first call of a newly traced step (graph optimisation + first run) and a wait for the chief's
        # start or epoch end (its own work) get max(4 x this, 600 s)
        "collective_timeout": 300,
        # the confusion matrix, recall per class and learning curves: PNGs in the run folder at the end and images in
        # TensorBoard as the best epoch changes; false skips them (a quick check that only wants the numbers)
        "pictures": True,
    },
}

CHOICES = {
    "data.max_frames_mode": ("crop", "subsample"),
    "split.method": ("actor", "random"),
    "model.encoder": ("bilstm", "transformer"),
    "train.optimizer": ("adam", "adamw", "sgd"),
    "train.monitor": ("val_uar", "val_accuracy", "val_loss"),
    "train.class_weights": ("balanced", "none"),
    "train.mixed_precision": ("auto", "on", "off"),
    "train.distribute": ("auto", "mirrored", "multi_worker", "off"),
}
POSITIVE = {
    "data.feature_dim", "model.units", "model.layers", "model.heads", "model.head_units",
    "train.batch_size", "train.epochs", "train.learning_rate", "train.workers", "train.collective_timeout",
    "train.steps_per_execution",
}
# The loop unrolls K steps into one graph: its trace, optimisation and first run grow with K (measured on
# a loaded 2-core CPU: 53 s, and in another run about 5 min, for the first call at K=24; 163 s for an
# epoch of 48 steps in one call; 0.9 s a call at K=16 once traced), and 2K+2 batches are read ahead onto
# the device; at K=32 the host's per-call work is already paid once per 32 steps, so a larger K gains
# little and costs minutes.
MAX_STEPS_PER_EXECUTION = 32
FREE_FORM = {"data.label_map"}  # nested mapping checked by check_label_map


def load_config(path=None, overrides=()):
    """Defaults, then the YAML file at `path`, then `key=value` overrides; validated."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Config file {path} does not exist.")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"Config file {path} is not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"Config file {path} must hold a mapping. Received: {type(loaded).__name__}")
        _merge(cfg, loaded, prefix="", source=str(path))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value (e.g. train.epochs=5). Received: {item!r}")
        _merge(cfg, _nest(key.strip(), yaml.safe_load(raw)), prefix="", source="--set")
    check_config(cfg)
    return cfg


def _nest(dotted, value):
    out = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def _merge(base, new, prefix, source, free=False):
    for key, value in new.items():
        dotted = f"{prefix}{key}"
        if free or dotted in FREE_FORM:  # entries merge one by one; check_label_map checks them
            if isinstance(base.get(key), dict) and isinstance(value, dict):
                _merge(base[key], value, f"{dotted}.", source, free=True)
            else:
                base[key] = value
            continue
        if key not in base:
            known = ", ".join(sorted(base))
            raise ConfigError(f"Unknown config key {dotted!r} in {source}. Known keys here: {known}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"Config key {dotted!r} in {source} must be a mapping. Received: {value!r}")
            _merge(base[key], value, prefix=f"{dotted}.", source=source)
        elif isinstance(value, bool) and dotted in CHOICES and ("on", "off")[not value] in CHOICES[dotted]:
            base[key] = ("on", "off")[not value]  # YAML 1.1 reads a bare on/off as true/false
        else:
            base[key] = value


YAML11_EXPONENT = re.compile(r"[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+")


def check_config(cfg):
    """Raise ConfigError for the first value of the wrong type or out of range."""
    for dotted, default in _leaves(DEFAULTS):
        value = _get(cfg, dotted)
        if dotted in FREE_FORM:
            continue
        expected = type(default)
        if expected is float and isinstance(value, str) and YAML11_EXPONENT.fullmatch(value.strip()):
            value = float(value)  # PyYAML (YAML 1.1) reads 1e-4, without a dot, as a string
            parent, _, leaf = dotted.rpartition(".")
            (_get(cfg, parent) if parent else cfg)[leaf] = value
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ConfigError(f"Config key {dotted!r} expects {expected.__name__}. Received: {value!r}")
        if dotted in CHOICES and value not in CHOICES[dotted]:
            raise ConfigError(f"Config key {dotted!r} expects one of {list(CHOICES[dotted])}. Received: {value!r}")
        if dotted in POSITIVE and value <= 0:
            raise ConfigError(f"Config key {dotted!r} must be > 0. Received: {value!r}")
    if cfg["train"]["steps_per_execution"] > MAX_STEPS_PER_EXECUTION:
        raise ConfigError(f"Config key 'train.steps_per_execution' must be at most {MAX_STEPS_PER_EXECUTION} (the K steps of a call "
                          f"are unrolled into one graph, whose build grows with K). Received: {cfg['train']['steps_per_execution']!r}")
    if not 0 < cfg["split"]["val_fraction"] < 1:
        raise ConfigError(f"Config key 'split.val_fraction' must be between 0 and 1. Received: {cfg['split']['val_fraction']!r}")
    if not 0 <= cfg["split"]["test_fraction"] < 1 or cfg["split"]["val_fraction"] + cfg["split"]["test_fraction"] >= 1:
        raise ConfigError("Config key 'split.test_fraction' must be in [0, 1) and leave training data beside split.val_fraction "
                          f"(their sum below 1). Received: test_fraction {cfg['split']['test_fraction']!r}, "
                          f"val_fraction {cfg['split']['val_fraction']!r}")
    if not 0 <= cfg["model"]["dropout"] < 1:
        raise ConfigError(f"Config key 'model.dropout' must be in [0, 1). Received: {cfg['model']['dropout']!r}")
    if cfg["data"]["max_clips"] < 0:
        raise ConfigError(f"Config key 'data.max_clips' must be >= 0 (0 = all). Received: {cfg['data']['max_clips']!r}")
    if cfg["data"]["max_frames"] < 0:
        raise ConfigError(f"Config key 'data.max_frames' must be >= 0 (0 = no cap). Received: {cfg['data']['max_frames']!r}")
    classes = cfg["data"]["classes"]
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ConfigError(f"Config key 'data.classes' expects at least two distinct class names. Received: {classes!r}")
    check_label_map(cfg["data"]["label_map"], classes)


def check_label_map(label_map, classes):
    if not isinstance(label_map, dict) or set(label_map) - {"crema_d", "ravdess"}:
        raise ConfigError(f"Config key 'data.label_map' expects a mapping with keys crema_d and ravdess. Received: {label_map!r}")
    for corpus, mapping in label_map.items():
        if not isinstance(mapping, dict):
            raise ConfigError(f"Config key 'data.label_map.{corpus}' expects a mapping. Received: {mapping!r}")
        for code, target in mapping.items():
            if target is not None and target not in classes:
                raise ConfigError(
                    f"Config key 'data.label_map.{corpus}.{code}' maps to {target!r}, "
                    f"which is not in data.classes {classes}. Use null to exclude the label."
                )


def _leaves(tree, prefix=""):
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in FREE_FORM:
            yield from _leaves(value, f"{dotted}.")
        else:
            yield dotted, value


def _get(cfg, dotted):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def dump_config(cfg):
    return yaml.safe_dump(cfg, sort_keys=False)
