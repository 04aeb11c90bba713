"""Tables for people: the validation summary and the metrics of a run.

Uses only the standard library and rich, so the deploy side (no NumPy, no TensorFlow)
can print a fetched run's metrics with the same code. A fetched run's names (classes,
corpora, splits) come from the host: they are printed as plain text, never as markup, with
their control characters made visible (trainer/results/visible.py).
"""

import collections
import statistics

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from trainer.results.visible import visible_tree


def make_console(**kwargs):
    """A console for terminals and log files alike: long lines (paths) are not folded."""
    return Console(soft_wrap=True, **kwargs)


def print_validation_summary(result, console=None):
    console = console or make_console()
    entries, accepted, rejected = result.entries, result.accepted, result.rejected
    console.print(f"[bold]Searched[/] {escape(', '.join(map(str, result.dirs)))}: {len(entries)} .npz files, "
                  f"[green]{len(accepted)} accepted[/], [red]{len(rejected)} rejected[/]")
    if rejected:
        table = Table(title="Rejected files by reason", title_justify="left")
        for col in ("reason", "files", "examples"):
            table.add_column(col)
        by_reason = collections.defaultdict(list)
        for e in rejected:
            by_reason[e.reason].append(e)
        for reason, group in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
            examples = "\n".join(f"{e.path}: {e.detail}" for e in group[:2])
            table.add_row(reason, str(len(group)), Text(examples))  # file names: never markup
        console.print(table)
    if not accepted:
        return
    table = Table(title="Accepted files", title_justify="left")
    table.add_column("emotion")
    corpora = sorted({e.corpus for e in accepted})
    for corpus in corpora:
        table.add_column(Text(corpus), justify="right")
    table.add_column("total", justify="right")
    counts = collections.Counter((e.emotion, e.corpus) for e in accepted)
    for emotion in sorted({e.emotion for e in accepted}):
        row = [counts[(emotion, c)] for c in corpora]
        table.add_row(Text(emotion), *map(str, row), str(sum(row)))
    console.print(table)
    frames = [e.frames for e in accepted]
    actors = collections.Counter(e.corpus for e in {(e.corpus, e.actor): e for e in accepted}.values())
    console.print(
        "Actors: " + ", ".join(f"{n} {c}" for c, n in sorted(actors.items()))
        + f"   Frames per clip: min {min(frames)}, median {statistics.median(frames):g}, max {max(frames)}"
    )


def headline(metrics):
    """(split name, its metrics) a user should quote: the held-out test split when the run has one,
    else validation (which also chose the best epoch). Old runs kept one flat validation dict."""
    if "validation" not in metrics:
        return "validation", metrics
    name = metrics.get("headline") or ("test" if metrics.get("test") else "validation")
    return name, metrics[name]


def scores(m):
    """'UAR 0.612 [0.571, 0.650]   accuracy ...   macro F1 ...': the headline scores, with their 95% intervals when known."""
    def one(key):
        ci = (m.get("ci95") or {}).get(key)
        return f"{m[key]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    return f"UAR {one('uar')}   accuracy {one('accuracy')}   macro F1 {one('macro_f1')}"


def print_run_metrics(metrics, console=None, title="Run"):
    """A finished run: the headline split first (test UAR, accuracy, macro F1 with 95% intervals
    over actors, per corpus), then validation, the tables of the headline split and the compute."""
    console = console or make_console()
    metrics = visible_tree(metrics)
    name, m = headline(metrics)
    who = f"{m['samples']} clips" + (f", {m['actors']} actors" if m.get("actors") else "")
    console.print(Text(f"{title}, {name} ({who})", style="bold") + Text(f": {scores(m)}"))
    if m.get("interval"):
        console.print(Text(f"  intervals in brackets: {m['interval']}"))
    for corpus, part in (m.get("per_corpus") or {}).items():
        console.print(Text(f"  {corpus} ({part['samples']} clips, {part['actors']} actors): {scores(part)}"))
    if name != "validation" and metrics.get("validation"):
        v = metrics["validation"]
        console.print(Text(f"validation ({v['samples']} clips; it chose the best epoch, so it reads high): {scores(v)}"))
    elif "validation" in metrics:
        console.print("[yellow]No test split (split.test_fraction: 0): this validation score also chose the best epoch, "
                      "so it reads high.[/]")
    print_tables(m, console)
    compute = metrics.get("compute")
    if compute:
        usd = compute.get("cost_usd")
        cost = "" if usd is None else f", {'under $0.01' if usd < 0.01 else f'${usd:.2f}'} at ${compute['price_per_hour']:g}/h"
        hours = compute["hours"]
        took = f"{hours:.2f} h" if hours >= 1 else f"{hours * 60:.1f} min"
        console.print(Text(f"Compute: {took} on {compute['gpus']} GPU(s) ({compute['gpu_hours']:.2f} GPU hours){cost}"))


def print_cv(cv, console=None, title="Cross-validation"):
    """cv.json: per-fold test metrics, their mean and standard deviation, the pooled confusion matrix."""
    console = console or make_console()
    cv = visible_tree(cv)
    console.print(Text(f"{title}: {cv['folds_done']}/{cv['folds']} folds, actor-disjoint; each actor tested once", style="bold"))
    table = Table(title_justify="left")
    for col in ("fold", "test actors", "clips", "UAR", "accuracy", "macro F1"):
        table.add_column(col, justify="left" if col == "fold" else "right")
    for fold in cv["per_fold"]:
        m = fold["test"]
        table.add_row(*map(Text, (str(fold["fold"]), str(len(fold["test_actors"])), str(m["samples"]), f"{m['uar']:.3f}",
                                  f"{m['accuracy']:.3f}", f"{m['macro_f1']:.3f}")))
    if cv.get("mean"):
        table.add_row("mean ± sd", "", "", *(f"{cv['mean'][k]:.3f} ± {cv['std'][k]:.3f}" for k in ("uar", "accuracy", "macro_f1")))
    console.print(table)
    if cv.get("pooled"):
        print_tables(cv["pooled"], console, "Pooled over folds: ")


def print_metrics(metrics, console=None, title="Validation metrics"):
    """Accuracy, UAR, macro F1, per-class precision/recall/F1 and the confusion matrix."""
    console = console or make_console()
    console.print(
        f"[bold]{title}[/]: accuracy {metrics['accuracy']:.3f}   UAR {metrics['uar']:.3f}   "
        f"macro F1 {metrics['macro_f1']:.3f}   ({metrics['samples']} clips)"
    )
    print_tables(metrics, console)


def print_tables(metrics, console, prefix=""):
    """Per-class precision/recall/F1 and the confusion matrix (every name as plain text)."""
    metrics = visible_tree(metrics)
    table = Table(title=f"{prefix}Per class" if prefix else None, title_justify="left")
    for col in ("class", "precision", "recall", "F1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, row in metrics["per_class"].items():
        table.add_row(Text(name), f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", Text(str(row["support"])))
    console.print(table)
    names = metrics["classes"]
    cm = Table(title=f"{prefix}Confusion matrix (rows: true, columns: predicted)", title_justify="left")
    cm.add_column("")
    for name in names:
        cm.add_column(Text(name), justify="right")
    for name, row in zip(names, metrics["confusion_matrix"]):
        cm.add_row(Text(name), *(Text(str(n)) for n in row))
    console.print(cm)
