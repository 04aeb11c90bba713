"""`fab compare`: two runs' paired difference on their shared test actors (the work is in deploy/runs/compare.py)."""

from fabric import task
from invoke.exceptions import Exit

from deploy.inventory import load_inventory
from deploy.tasks.plumbing import as_exit, console, interrupts_end_the_step, say


@task(help={"run_a": "run A: a run name, or a run folder on this machine",
            "run_b": "run B, tested on the same clips as A",
            "dest": "where fetched runs are (DEST/<host>/<run>) and where runs read from storage or a host go (default: results)",
            "out": "where compare-A-vs-B.json and compare-A-vs-B.png go (default: DEST)"})
def compare(c, run_a, run_b, dest="results", out=None):
    """B − A in test UAR, accuracy and macro F1 with 95% intervals paired over the test actors both runs share; the verdict.

    Each run is read where it is: a folder, a fetched copy (DEST/<host>/<run>), run storage, or a host
    (-H first, then the inventory's hosts: only its test predictions come over). The comparison is
    `python -m trainer compare`'s: per-clip test predictions, a paired bootstrap over actors (a
    cross-validation pairs every actor), per-class recall of both runs drawn beside their difference.
    Never used to choose a configuration (the validation split chooses: `fab sweep`). Exit code: 0
    compared (whatever the verdict); 2 refused (runs tested on different clips, a run without test
    predictions or not found, naming it); 6 a host that holds a run cannot be reached; 1 anything else.
    """
    from deploy.runs.compare import compare as run_compare

    try:
        with interrupts_end_the_step():
            run_compare(c, load_inventory(), run_a, run_b, dest, out or dest, say, console)
    except Exit:
        raise
    except BaseException as e:
        raise as_exit(e) from None
