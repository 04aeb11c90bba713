"""`python -m trainer compare`: the paired difference of two runs on the same test clips, from prediction files
written here with numpy (no TensorFlow, no training).

Nothing here can flake: every prediction comes from a numpy Generator with a fixed seed, and the bootstrap draws
with its own fixed seed (compare.py, seed 0), so each test computes the same numbers on every run.
"""

import json
import re

import numpy as np
import pytest

from tests.support.helpers import run_trainer
from tests.support.predictions import ACTORS, CLASSES, predict, shuffle_class, truth, write_run
from trainer.errors import UserError
from trainer.results.compare import compare_runs, write_comparison
from trainer.results.metrics import bootstrap_ci
from trainer.results.plots import compare_recall_figure


def test_a_class_shuffled_in_b_is_found_worse_and_only_that_class_differs(tmp_path):
    clips = truth()
    base = predict(clips, seed=1)
    a = write_run(tmp_path / "a", clips, base)
    b = write_run(tmp_path / "b", clips, shuffle_class(clips, base, CLASSES.index("FEA"), seed=2))
    result = compare_runs(a, b)
    lo, hi = result["ci95"]["uar"]
    assert result["difference"]["uar"] < 0 and hi < 0, result["ci95"]  # FEA's recall falls from ~0.6 to ~1/6
    assert result["verdict"].startswith("B is worse: UAR B − A = -0.")
    assert result["clips"] == len(clips) and result["actors"] == len(ACTORS)
    assert result["recall_ci95"]["FEA"][1] < 0
    for name in set(CLASSES) - {"FEA"}:  # the same predictions: no difference in any resample
        assert result["recall_difference"][name] == 0 and result["recall_ci95"][name] == [0, 0]
    swapped = compare_runs(b, a)  # the clearly better model as B
    assert swapped["verdict"].startswith("B is better")
    assert swapped["ci95"]["uar"] == pytest.approx([-hi, -lo]) and swapped["difference"]["uar"] == pytest.approx(-result["difference"]["uar"])


def test_two_seeds_of_one_config_are_no_different_and_pairing_narrows_the_interval(tmp_path):
    # Two runs of one config: which clips are easy shared, each run's luck on them drawn from seeds 11 and 12. Not a
    # coin flip: of the seed pairs (11, 12), (13, 14) ... (39, 40) none excludes 0 here, and these put 0 more than
    # 0.03 inside each end (asserted with 0.02); fixed seeds, so the same numbers every time.
    clips = truth()
    runs = [write_run(tmp_path / f"seed-{s}", clips, predict(clips, seed=s)) for s in (11, 12)]
    result = compare_runs(*runs)
    lo, hi = result["ci95"]["uar"]
    assert lo + 0.02 < 0 < hi - 0.02, result["ci95"]
    assert result["verdict"].startswith("no difference shown") and "holds 0" in result["verdict"]
    # the actors both runs find hard or easy cancel out of the difference: its interval is narrower than either run's own
    y = np.array([t for _, _, t in clips])
    actors = [actor for _, actor, _ in clips]
    for seed in (11, 12):
        own_lo, own_hi = bootstrap_ci(y, predict(clips, seed=seed), actors, len(CLASSES))["uar"]
        assert hi - lo < own_hi - own_lo, (seed, result["ci95"]["uar"], [own_lo, own_hi])


def test_runs_tested_on_different_actors_are_refused_naming_them(tmp_path):
    clips = truth()
    a = write_run(tmp_path / "a", clips, predict(clips, seed=1))
    other = [c for c in clips if c[1] not in ("crema-d:1003", "crema-d:1004")] + truth(["1099"], per_class=1)
    b = write_run(tmp_path / "b", other, predict(other, seed=2))
    with pytest.raises(UserError) as refused:
        compare_runs(a, b)
    message = str(refused.value)
    assert "tested on different clips" in message
    assert f"clips only in {a}: 60 (1003_S00_ANG_XX.npz" in message and f"clips only in {b}: 6 (1099_S00_ANG_XX.npz" in message
    assert f"actors only in {a}: 2 (crema-d:1003, crema-d:1004)" in message and f"actors only in {b}: 1 (crema-d:1099)" in message
    proc = run_trainer("compare", a, b, "--out", tmp_path / "out")  # the command line: exit 2, the message, nothing written
    assert proc.returncode == 2 and "actors only in" in proc.stderr and "crema-d:1099" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def write_cv(folder, clips, predicted, folds):
    """A cross-validation run folder: cv-plan.json and each fold's test predictions (its actors' clips)."""
    folder.mkdir(parents=True)
    (folder / "cv-plan.json").write_text(json.dumps({"folds": len(folds), "test_actors": folds}))
    for k, actors in enumerate(folds, 1):
        mine = [i for i, c in enumerate(clips) if c[1] in actors]
        write_run(folder / f"fold-{k}", [clips[i] for i in mine], [predicted[i] for i in mine])
    return folder


def test_two_cross_validations_with_the_same_folds_are_paired_over_every_actor(tmp_path):
    clips = truth()
    folds = [[f"crema-d:{a}" for a in ACTORS[k::4]] for k in range(4)]
    base = predict(clips, seed=1)
    a = write_cv(tmp_path / "cv-a", clips, base, folds)
    b = write_cv(tmp_path / "cv-b", clips, shuffle_class(clips, base, CLASSES.index("SAD"), seed=3), folds)
    result = compare_runs(a, b)
    assert result["actors"] == len(ACTORS) and result["clips"] == len(clips)  # every actor, from the four folds
    assert result["a"]["folds"] == result["b"]["folds"] == 4 and result["notes"] == []
    assert result["ci95"]["uar"][1] < 0 and result["verdict"].startswith("B is worse")
    json_path, png_path = write_comparison(result, tmp_path / "out")
    assert json_path.name == "compare-cv-a-vs-cv-b.json" and json.loads(json_path.read_text())["verdict"] == result["verdict"]
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = compare_recall_figure(result)
    assert "A: cv-a vs B: cv-b" in fig.get_suptitle() and [ax.get_xticklabels()[2].get_text() for ax in fig.axes[:1]] == ["FEA"]
    single = write_run(tmp_path / "single", clips, base)  # a plain run holding the same clips pairs with a CV run too
    assert compare_runs(single, a)["difference"]["uar"] == 0


def test_a_missing_or_corrupt_predictions_file_is_named(tmp_path):
    clips = truth(ACTORS[:4])
    good = write_run(tmp_path / "good", clips, predict(clips, seed=1))
    (tmp_path / "old").mkdir()  # a run from before runs kept their predictions
    with pytest.raises(UserError, match=re.escape(str(tmp_path / 'old' / 'test_predictions.json')) + " does not exist: the run has no test split"):
        compare_runs(good, tmp_path / "old")
    torn = write_run(tmp_path / "torn", clips, predict(clips, seed=1))
    (torn / "test_predictions.json").write_text('{"version": 1, "classes": ["ANG"')
    with pytest.raises(UserError, match=re.escape(str(torn / 'test_predictions.json')) + " does not read as JSON"):
        compare_runs(good, torn)
    (torn / "test_predictions.json").write_text(json.dumps({"version": 1, "classes": CLASSES, "clips": [{"clip": "x.npz"}]}))
    with pytest.raises(UserError, match=re.escape(str(torn / 'test_predictions.json')) + " is not a test predictions file.*clip 0 needs"):
        compare_runs(good, torn)
    cv = write_cv(tmp_path / "cv", clips, predict(clips, seed=1), [[f"crema-d:{a}" for a in part] for part in (ACTORS[:2], ACTORS[2:4])])
    (cv / "fold-2" / "test_predictions.json").unlink()  # a fold not finished
    with pytest.raises(UserError, match=re.escape(str(cv / 'fold-2' / 'test_predictions.json')) + " does not exist"):
        compare_runs(good, cv)
    proc = run_trainer("compare", good, tmp_path / "nowhere")
    assert proc.returncode == 2 and f"{tmp_path / 'nowhere'} is not a run folder" in proc.stderr, proc.stderr


def test_the_command_prints_the_table_and_the_verdict_and_writes_beside_the_output(tmp_path):
    clips = truth(ACTORS[:8])
    base = predict(clips, seed=1)
    a = write_run(tmp_path / "a", clips, base)
    b = write_run(tmp_path / "b", clips, shuffle_class(clips, base, 0, seed=2))
    proc = run_trainer("compare", a, b, "--out", tmp_path / "out", "--result", tmp_path / "result.json")
    assert proc.returncode == 0, proc.stderr
    for text in ("B − A", "95% interval", "recall ANG", "B is worse: UAR B − A", "compare-a-vs-b.png"):
        assert text in proc.stdout, (text, proc.stdout)
    assert (tmp_path / "out" / "compare-a-vs-b.png").is_file()
    outcome = json.loads((tmp_path / "result.json").read_text())
    assert outcome["ok"] and outcome["message"].startswith("B is worse") and outcome["ci95"]["uar"][1] < 0
