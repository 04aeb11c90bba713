"""The run's pictures read at a glance: whole epochs, the best epoch marked, chance drawn, the run
named on each picture, recall written on its bars, a curve at 1.0 in sight."""

import csv

from trainer.results.metrics import metrics_from_confusion
from trainer.results.plots import confusion_figure, learning_curves_figure, learning_curves_png, recall_figure, save_pictures


def write_history(path, epochs, perfect=False):
    """history.csv as CSVLogger writes it; `perfect`: training accuracy and UAR reach 1.0."""
    keys = ["epoch", "loss", "accuracy", "uar", "val_loss", "val_accuracy", "val_uar"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        for e in range(epochs):
            w.writerow({"epoch": e, "loss": 2 - e / 10, "accuracy": 1.0 if perfect else 0.2 + e / 20,
                        "uar": 1.0 if perfect else 0.2 + e / 25,
                        "val_loss": 2.1 - e / 12, "val_accuracy": 0.18 + e / 30, "val_uar": 0.17 + e / 40})
    return path


METRICS = metrics_from_confusion([[3, 1, 0], [0, 4, 0], [1, 1, 2]], ["ANG", "HAP", "SAD"])  # recall 0.75, 1.00, 0.50


def titles(fig):
    """Every title the figure shows: its suptitle and each panel's."""
    return [fig.get_suptitle()] + [ax.get_title() for ax in fig.axes]


def test_every_picture_names_its_run(tmp_path):
    history = write_history(tmp_path / "history.csv", 3)
    for fig in (confusion_figure(METRICS, "test", "exp-3"), recall_figure(METRICS, "test", "exp-3"),
                learning_curves_figure(history, 2, 3, run="exp-3")):
        assert any("exp-3" in t for t in titles(fig)), titles(fig)
    run_dir = tmp_path / "cv-7" / "fold-2"  # a fold of a cross-validation: both names
    run_dir.mkdir(parents=True)
    assert "cv-7/fold-2" in learning_curves_figure(write_history(run_dir / "history.csv", 3), 2, 3).get_suptitle()


def test_saved_pictures_name_the_run_directory(tmp_path, monkeypatch):
    from trainer.results import plots

    drawn = []
    monkeypatch.setattr(plots, "_png", lambda fig: drawn.append(fig) or b"png")
    run_dir = tmp_path / "20261124-101500"
    run_dir.mkdir()
    write_history(run_dir / "history.csv", 3)
    assert set(save_pictures(run_dir, METRICS, "test", best_epoch=2)) == set(plots.PICTURES)
    assert len(drawn) == 3 and all(any("20261124-101500" in t for t in titles(fig)) for fig in drawn)


def test_recall_bars_show_their_values_and_a_bar_at_one_is_not_cut():
    fig = recall_figure(METRICS, "test", "exp-3")
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.texts] == ["0.75", "1.00", "0.50"]
    assert ax.get_ylim()[1] > 1.0


def test_a_learning_curve_at_one_stays_below_the_top_of_its_panel(tmp_path):
    fig = learning_curves_figure(write_history(tmp_path / "history.csv", 3, perfect=True), 2, 3, run="exp-3")
    for ax in fig.axes:
        if ax.get_title() != "loss":
            assert 1.0 < ax.get_ylim()[1] <= 1.05, (ax.get_title(), ax.get_ylim())


def test_learning_curves_have_whole_epochs_the_best_epoch_and_chance(tmp_path):
    fig = learning_curves_figure(write_history(tmp_path / "history.csv", 3), best_epoch=2, classes=6)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    axes = {ax.get_title(): ax for ax in fig.axes}
    assert set(axes) == {"loss", "accuracy", "UAR"}
    for title, ax in axes.items():
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), (title, ticks)  # 1, 2, 3: never 1.25, 1.5
        vertical = [line for line in ax.get_lines() if list(line.get_xdata()) == [2, 2]]
        assert vertical and "best epoch" in vertical[0].get_label(), title
        chance = [line for line in ax.get_lines() if list(line.get_ydata()) == [1 / 6, 1 / 6]]
        assert bool(chance) == (title != "loss"), title  # chance on accuracy and UAR only
    assert learning_curves_png(tmp_path / "history.csv", 2, 6).startswith(b"\x89PNG")
