"""What kind of test each one is, and `pytest --fast` (`make test-fast`): the tests that start no
TensorFlow and no sshd, for the edit-test loop. `make test` runs every test, whatever its kind.

The folder says the kind: a test in tests/trainer is `tf`, in tests/host `ssh`, in tests/journeys `slow`
(and ssh or tf by its marks and fixtures); tests/unit holds the others, and a test there that is marked
or uses a fixture of another kind is a collection error that says where to move it.

    ssh   starts or uses a real sshd on 127.0.0.1; set by fixture use (ssh_host, host_venv,
          fake_bin_host and every fixture built on them), or by hand for a test that starts its own
    tf    imports TensorFlow, in the test's process or in one it starts (a trainer, a smoke test);
          set by hand (module `pytestmark` or a decorator), or by fixture use (tests/support/fixtures_runs.py)
    slow  trains a model or runs a full deploy (always one of the two above)

Under pytest-xdist (make test runs `-n 4 --dist loadgroup`) the slow kinds go first, the tests that
read one shared run (tests/support/fixtures_runs.py) go to one worker, which trains it once, and so do the
tests of a module that share a module-scoped fixture of that module.

Under --fast, the tests of these kinds are deselected and the others are held to it: a test that
imports TensorFlow (here or in a Python it starts) or starts an sshd fails, naming the marker it
lacks. A new test that uses the deploy fixtures needs nothing; one that trains needs `tf`.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

SSH_FIXTURES = {"ssh_host", "host_venv", "fake_bin_host"}  # every deploy fixture uses one of these
TF_FIXTURES = {"trained_run", "stopped_run", "finished_host"}  # tests/support/fixtures_runs.py
TIER_KINDS = {"trainer": "tf", "host": "ssh", "journeys": "slow"}  # tests/<folder>: the kind its tests have
FAST_SKIPS = ("ssh", "tf", "slow")
TF_MODULES = ("tensorflow", "keras", "tf_keras")
FAST_LOG = "FACENET_TEST_FAST_LOG"  # where a blocked import in a child Python says what it was


def pytest_addoption(parser):
    parser.addoption("--fast", action="store_true",
                     help="only the tests that start no TensorFlow and no sshd (make test-fast); each is held to it")


@pytest.hookimpl(tryfirst=True)  # the marks before pytest-xdist reads them
def pytest_collection_modifyitems(config, items):
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & SSH_FIXTURES and not item.get_closest_marker("ssh"):
            item.add_marker("ssh")
        if used & TF_FIXTURES and not item.get_closest_marker("tf"):
            item.add_marker("tf")
        tier = _tier(item)
        if tier in TIER_KINDS and not item.get_closest_marker(TIER_KINDS[tier]):
            item.add_marker(TIER_KINDS[tier])
        if hasattr(config, "workerinput"):  # a pytest-xdist worker: the readers of a shared run share one worker
            for name in sorted(used & TF_FIXTURES):
                item.add_marker(pytest.mark.xdist_group(name))
            if _uses_a_module_fixture(item):  # set up once per worker that runs one of the module's tests: one worker
                item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    misplaced = [f"{item.nodeid} is of kind {', '.join(m for m in FAST_SKIPS if item.get_closest_marker(m))} (its marks or fixtures)"
                 for item in items if _tier(item) == "unit" and any(item.get_closest_marker(m) for m in FAST_SKIPS)]
    if misplaced:
        raise pytest.UsageError("tests/unit holds the tests that start no TensorFlow and no sshd: move each of these to tests/trainer "
                                "(TensorFlow) or tests/host (sshd):\n  " + "\n  ".join(misplaced))
    if hasattr(config, "workerinput"):
        # the slowest kinds first, so that the quick tests fill the end and no worker waits on a long one
        items.sort(key=lambda item: 0 if item.get_closest_marker("slow") else 1 if item.get_closest_marker("tf") or
                   item.get_closest_marker("ssh") else 2)
    if config.getoption("fast"):
        keep = [item for item in items if not any(item.get_closest_marker(m) for m in FAST_SKIPS)]
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """A test of kind tf runs the trainer warm (tests/support/warm_runner.py: TensorFlow loaded once per worker);
    the others run it as a new process, which loads no TensorFlow for what they ask of it."""
    from tests.support import warm_runner

    warm_runner.trainer_warm = item.get_closest_marker("tf") is not None


def _tier(item):
    """The tier folder of tests/ that holds the test (unit, trainer, host, journeys), or None."""
    folder = item.path.parent
    return folder.name if folder.parent.name == "tests" else None


def _uses_a_module_fixture(item):
    """Whether the test uses a module-scoped fixture of its own module (test_storage_deploy's `stored` trains and
    stops a host: run on two workers, it would be made twice)."""
    infos = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    return any(d.scope == "module" and d.baseid == item.nodeid.split("::")[0] for defs in infos.values() for d in defs)


class _NoTensorFlow:
    """A meta path finder that refuses TensorFlow and Keras: under --fast no test may import them."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in TF_MODULES:
            raise ImportError(f"make test-fast: this test imports {name}: mark it `tf` (pytest.mark.tf) so that only make test runs it")
        return None


STUB = '''import os
with open(os.environ["{log}"], "a") as f:
    f.write("{name} imported by: " + " ".join(__import__("sys").argv) + "\\n")
raise ImportError("make test-fast: this test starts a Python that imports {name}: mark it `tf` (pytest.mark.tf)")
'''


def pytest_configure(config):
    """Under --fast, before collection: no TensorFlow in this process, nor in a Python a test starts (a
    stub package first on PYTHONPATH refuses it and leaves a line in FACENET_TEST_FAST_LOG), and no sshd."""
    if not config.getoption("fast"):
        return
    stubs = Path(tempfile.mkdtemp(prefix="facenet-test-fast-"))
    for name in TF_MODULES:
        (stubs / name).mkdir()
        (stubs / name / "__init__.py").write_text(STUB.format(log=FAST_LOG, name=name))
    log = stubs / "imports.log"
    log.touch()
    saved = {key: os.environ.get(key) for key in ("PYTHONPATH", FAST_LOG)}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(stubs), os.environ.get("PYTHONPATH")]))
    os.environ[FAST_LOG] = str(log)
    finder = _NoTensorFlow()
    sys.meta_path.insert(0, finder)
    from deploy.demo import localhost

    start = localhost.LocalSSHHost.start

    def refuse(self, *args, **kwargs):
        raise RuntimeError("make test-fast: this test starts an sshd: mark it `ssh` (pytest.mark.ssh), or use the ssh_host fixture")

    localhost.LocalSSHHost.start = refuse

    def undo():
        localhost.LocalSSHHost.start = start
        sys.meta_path.remove(finder)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(stubs, ignore_errors=True)

    config.stash[_log_key] = log
    config.add_cleanup(undo)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """Under --fast, a test module that imports TensorFlow as it loads is all `tf`: skipped, not an error."""
    report = yield
    if report.failed and collector.config.getoption("fast") and "make test-fast: this test imports" in str(report.longrepr):
        report.outcome, report.longrepr = "skipped", (str(collector.path), 0, "make test-fast: the module imports TensorFlow (make test runs it)")
    return report


_log_key = pytest.StashKey[Path]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """Under --fast: a test whose child Python tried TensorFlow fails, even if it expected that child to fail."""
    log = item.config.stash.get(_log_key, None)
    before = log.stat().st_size if log else 0
    result = yield
    if log and log.stat().st_size > before:
        with open(log) as f:
            f.seek(before)
            pytest.fail(f"make test-fast: this test starts TensorFlow: mark it `tf` (pytest.mark.tf).\n{f.read()}", pytrace=False)
    return result
