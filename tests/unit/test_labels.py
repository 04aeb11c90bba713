from trainer.config import DEFAULTS
from trainer.data.labels import Labeller, parse_name

LABELLER = Labeller(DEFAULTS["data"]["label_map"])


def test_crema_d_name_gives_emotion_and_corpus_prefixed_actor():
    assert LABELLER.label("/d/1078_IWL_ANG_XX.npz") == ("ANG", "crema-d:1078", None)
    assert LABELLER.label("/d/1001_IEO_SAD_HI_facenet_features.npz") == ("SAD", "crema-d:1001", None)


def test_ravdess_name_gives_third_field_emotion_and_seventh_field_actor():
    assert LABELLER.label("Actor_12/01-01-03-01-01-01-12.npz") == ("HAP", "ravdess:12", None)
    assert LABELLER.label("Actor_01/02-01-05-02-01-02-01_facenet_features.npz") == ("ANG", "ravdess:01", None)


def test_ravdess_calm_is_neutral_and_surprised_is_excluded_not_relabelled():
    assert LABELLER.label("01-01-02-01-01-01-07.npz")[0] == "NEU"
    emotion, actor, problem = LABELLER.label("01-01-08-01-01-01-07.npz")
    assert emotion is None and actor == "ravdess:07"
    assert problem[0] == "unknown-label" and "surprised" in problem[1]


def test_actor_ids_of_the_two_corpora_never_collide():
    assert parse_name("1001_IWL_ANG_XX.npz").actor != parse_name("01-01-03-01-01-01-01.npz").actor


def test_unknown_emotion_code_and_bad_names_are_reported():
    assert LABELLER.label("1001_IWL_XYZ_XX.npz")[2][0] == "unknown-label"
    for name in ("clip.npz", "1001_IWL_ANG.npz", "01-01-03-01-01-12.npz", "Actor_12.npz"):
        assert LABELLER.label(name)[2][0] == "bad-name", name


def test_label_map_is_configuration():
    labeller = Labeller({"crema_d": {"ANG": "ANG"}, "ravdess": {2: "CALM"}})  # int keys as YAML gives them
    assert labeller.label("01-01-02-01-01-01-03.npz")[0] == "CALM"
    assert labeller.label("1001_IWL_HAP_XX.npz")[2][0] == "unknown-label"


def test_synth_with_more_clips_than_names_exits_2_saying_the_range(tmp_path):
    from tests.support.helpers import run_trainer

    proc = run_trainer("synth", "--out", tmp_path / "x", "--corpus", "ravdess", "--clips", "5000")
    assert proc.returncode == 2 and "expects 1..1440" in proc.stderr and "Traceback" not in proc.stderr
