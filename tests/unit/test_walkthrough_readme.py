"""The README's walkthrough still has the shape tests/journeys/test_walkthrough.py types (fast: it reads README.md only)."""

import pytest

from tests.support import readme_walkthrough
from tests.support.readme_walkthrough import README, STEPS, WALKTHROUGH, hyperparameter_change, walkthrough


def test_the_readme_is_read_as_this_test_expects():
    """Fast (no host): the README's walkthrough and hyperparameter change still have the shape the slow test types."""
    assert [kind for kind, _, _ in walkthrough()] == [kind for kind, _ in STEPS]
    edit, line, run = hyperparameter_change()
    assert edit and line == f"fab train --run-name {run}"


@pytest.mark.parametrize("change, says", [
    (lambda text: text.replace(WALKTHROUGH + "\n", "## Quick start\n"), "has no `## Walkthrough` heading"),
    (lambda text: text.replace("fab monitor\n", "fab monitor\nfab logs\n", 1), "does not know: 'fab logs'"),
    (lambda text: text.replace("fab fetch-results\n", "", 1), "changed shape"),
    (lambda text: text.replace("# 2. Feature", "```\n```sh\n# 2. Feature", 1), "should hold one ```sh block; it holds 2"),
])
def test_a_walkthrough_of_another_shape_fails_naming_the_readme(tmp_path, monkeypatch, change, says):
    changed = tmp_path / "README.md"
    changed.write_text(change(README.read_text()))
    monkeypatch.setattr(readme_walkthrough, "README", changed)  # walkthrough() reads its own module's README
    with pytest.raises(pytest.fail.Exception) as failed:
        walkthrough()
    assert str(changed) in str(failed.value) and says in str(failed.value), failed.value
