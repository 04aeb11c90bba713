"""The README's walkthrough and its hyperparameter change as tests/journeys/test_walkthrough.py types them: read from
README.md, each command matched to the step it is; a README of another shape fails naming README.md."""

import re

import pytest
import yaml

from tests.support.helpers import ROOT

README = ROOT / "README.md"
WALKTHROUGH, HYPERPARAMETER = "## Walkthrough", "## Change a hyperparameter and train again"

# Each command of the walkthrough's block, in this order, once: (kind, pattern of the whole line).
STEPS = [
    ("make venv", r"make venv"),
    ("activate", r"\. \.venv/bin/activate"),
    ("synth", r"python -m trainer synth --out (?P<data>\S+) --corpus crema-d --clips (?P<clips>\d+) --seed \d+"),
    ("validate", r"python -m trainer validate --data (?P<data>\S+)"),
    ("config", r"printf '.*' > (?P<config>configs/\S+\.yaml)"),
    ("inventory", r"printf '.*' > (?P<inventory>\S+\.yaml)"),
    ("export", r"export FACENET_INVENTORY=(?P<value>\S+)"),
    ("deploy-full", r"fab (?P<host>-H \S+ -i \S+) deploy-full --run-name (?P<run>\S+)"),
    ("monitor", r"fab monitor"),
    ("follow", r"fab monitor --follow"),
    ("fetch-results", r"fab fetch-results"),
]


# --- reading the README --------------------------------------------------------------------------

def section(heading):
    """The lines of README.md's section under `heading`, up to the next `## ` heading."""
    lines = README.read_text().splitlines()
    if heading not in lines:
        pytest.fail(f"{README} has no `{heading}` heading: tests/journeys/test_walkthrough.py runs the commands under it")
    rest = lines[lines.index(heading) + 1:]
    end = next((i for i, line in enumerate(rest) if line.startswith("## ")), len(rest))
    return rest[:end]


def fenced(lines, language):
    """The `language` fenced blocks of `lines` (indented ones too, as in a numbered list), each a list of its lines
    without the fence's indent."""
    blocks, block, inside, indent = [], None, False, 0
    for line in lines:
        text = line.strip()
        if not inside and text.startswith("```"):
            inside, block, indent = True, ([] if text == f"```{language}" else None), len(line) - len(line.lstrip())
        elif inside and text == "```":
            inside = False
            if block is not None:
                blocks.append(block)
        elif inside and block is not None:
            block.append(line[indent:].rstrip())
    return blocks


def walkthrough():
    """[(kind, command line, its fields)] of the Walkthrough's one ```sh block, in the order of STEPS."""
    blocks = fenced(section(WALKTHROUGH), "sh")
    if len(blocks) != 1:
        pytest.fail(f"{README}'s {WALKTHROUGH} should hold one ```sh block; it holds {len(blocks)}")
    commands = [line.strip() for line in blocks[0] if line.strip() and not line.strip().startswith("#")]
    steps = []
    for line in commands:
        kinds = [(kind, m) for kind, pattern in STEPS if (m := re.fullmatch(pattern, line))]
        if not kinds:
            pytest.fail(f"{README}'s {WALKTHROUGH} has a command tests/journeys/test_walkthrough.py does not know: {line!r}\n"
                        f"(it knows: {', '.join(kind for kind, _ in STEPS)}); change the test with the README")
        steps.append((kinds[0][0], line, kinds[0][1].groupdict()))
    found = [kind for kind, _, _ in steps]
    if found != [kind for kind, _ in STEPS]:
        pytest.fail(f"{README}'s {WALKTHROUGH} changed shape: its commands are, in order, {found}; "
                    f"tests/journeys/test_walkthrough.py expects {[kind for kind, _ in STEPS]}")
    return steps


def hyperparameter_change():
    """(the README's config edit as a mapping, its `fab train --run-name NAME` line, NAME)."""
    lines = section(HYPERPARAMETER)
    edits, shells = fenced(lines, "yaml"), fenced(lines, "sh")
    if len(edits) != 1 or len(shells) != 1:
        pytest.fail(f"{README}'s {HYPERPARAMETER} should hold one ```yaml block (the edit) and one ```sh block "
                    f"(the fab train line); it holds {len(edits)} and {len(shells)}")
    edit = yaml.safe_load("\n".join(edits[0]))
    commands = [line.strip() for line in shells[0] if line.strip() and not line.strip().startswith("#")]
    m = re.fullmatch(r"fab train --run-name (\S+)", commands[0]) if len(commands) == 1 else None
    if not isinstance(edit, dict) or not m:
        pytest.fail(f"{README}'s {HYPERPARAMETER} changed shape: edit {edit!r}, commands {commands!r}; "
                    "tests/journeys/test_walkthrough.py expects a YAML mapping and one `fab train --run-name NAME`")
    return edit, commands[0], m.group(1)
