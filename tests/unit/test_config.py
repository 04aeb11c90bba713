import pytest

from trainer.config import DEFAULTS, load_config
from trainer.errors import ConfigError


def test_defaults_validate_and_overrides_apply(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\nmodel:\n  encoder: transformer\n")
    cfg = load_config(path, ["train.batch_size=8", "data.max_frames=0"])
    assert cfg["train"]["epochs"] == 3 and cfg["model"]["encoder"] == "transformer"
    assert cfg["train"]["batch_size"] == 8 and cfg["data"]["max_frames"] == 0
    assert cfg["data"]["feature_key"] == DEFAULTS["data"]["feature_key"]


@pytest.mark.parametrize("override, words", [
    ("train.epocs=3", ["'train.epocs'", "Known keys"]),
    ("train.epochs=three", ["'train.epochs'", "int", "'three'"]),
    ("train.epochs=0", ["'train.epochs'", "> 0"]),
    ("model.encoder=gru", ["'model.encoder'", "bilstm", "'gru'"]),
    ("split.val_fraction=1.5", ["split.val_fraction", "between 0 and 1"]),
    ("data.classes=[ANG]", ["data.classes", "two distinct"]),
    ("data.label_map.crema_d.ANG=ANGRY", ["data.label_map.crema_d.ANG", "'ANGRY'"]),
    ("train.epochs", ["key=value"]),
    ("train.steps_per_execution=1000000000", ["'train.steps_per_execution'", "at most 32", "1000000000"]),  # a bound, not only a type
])
def test_bad_values_name_the_key_and_what_was_expected(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    for word in words:
        assert word in str(err.value)


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_shipped_configs_load():
    from trainer.training.smoke import SMOKE_CONFIG

    load_config(SMOKE_CONFIG)
    load_config(SMOKE_CONFIG.parent / "full.yaml")


def test_one_label_map_entry_can_be_overridden_without_losing_the_others():
    cfg = load_config(None, ["data.label_map.ravdess.08=SAD"])
    assert cfg["data"]["label_map"]["ravdess"]["08"] == "SAD"
    assert cfg["data"]["label_map"]["ravdess"]["03"] == "HAP"
    assert cfg["data"]["label_map"]["crema_d"]["ANG"] == "ANG"


def test_a_bare_on_or_off_means_the_choice_not_a_boolean(tmp_path):
    """YAML 1.1 reads `off` as false: `train.distribute: off` and `--set train.mixed_precision=on` must still work."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  distribute: off\n")
    assert load_config(path)["train"]["distribute"] == "off"
    assert load_config(None, ["train.mixed_precision=on", "train.distribute=off"])["train"]["mixed_precision"] == "on"
    with pytest.raises(ConfigError, match="train.class_weights"):
        load_config(None, ["train.class_weights=off"])  # not one of its choices: still an error


def test_a_learning_rate_in_exponent_notation_without_a_dot_is_a_number(tmp_path):
    """PyYAML (YAML 1.1) reads 1e-4 as a string; a Keras user writes it that way."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 1e-4\n")
    assert load_config(path)["train"]["learning_rate"] == 1e-4
    path.write_text("train:\n  learning_rate: fast\n")
    with pytest.raises(ConfigError, match="'train.learning_rate' expects float"):
        load_config(path)


def test_steps_per_execution_at_its_bound_is_accepted_and_one_more_is_an_exit_2_config_error():
    assert load_config(None, ["train.steps_per_execution=32"])["train"]["steps_per_execution"] == 32
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.steps_per_execution=33"])
    assert err.value.exit_code == 2
