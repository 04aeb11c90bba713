"""The user docs name only what exists, link only to what exists, and stay short.

- Every `fab ...` command in README.md and docs/*.md (code spans and code blocks, chained tasks
  such as `fab provision sync-code sync-data` included) names real tasks with real flags; so does
  every `python -m trainer ...` command. The tasks come from the fabfile's collection, loaded here
  (no `fab` process), the trainer's from its argparse parser; neither imports TensorFlow.
- Every task and every flag of the fabfile is documented somewhere, and every inventory key in
  docs/inventory.md.
- Every relative link of README.md, docs/*.md, CONTRIBUTING.md and bench/README.md resolves to a
  file, and a `#anchor` into a markdown file to one of its headings (GitHub's slugs).
- README.md has at most 200 lines, each docs page at most 300; the README's walkthrough is one
  ```sh block right under `## Walkthrough`.

A fast test (tests/support/kinds.py): no sshd, no TensorFlow.
"""

import argparse
import functools
import importlib.util
import re
import shlex

import pytest

from tests.support.helpers import ROOT

USER_DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINKING_DOCS = [*USER_DOCS, ROOT / "CONTRIBUTING.md", ROOT / "bench" / "README.md"]
README_MAX_LINES, PAGE_MAX_LINES = 200, 300
SHELL_BLOCKS = {"", "sh", "bash", "shell", "console", "text"}  # the fenced blocks whose lines are commands
SEPARATORS = {"|", "||", "&", "&&", ";", "(", ")", ">", ">>", "<"}  # a command ends at these
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)")
# a code span: backticks, then text without a blank line, then as many backticks (not more)
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^()\s<>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def rel(path):
    return path.relative_to(ROOT).as_posix()


# --- reading markdown --------------------------------------------------------------------------

@functools.cache
def parsed(path):
    """(prose, blocks): the text outside fenced blocks (each fenced line blanked, so offsets keep their
    line numbers), and each fenced block as (language, [(line number, line)])."""
    prose, blocks, fence = [], [], None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        opened = FENCE.match(line)
        if fence is None and opened:
            fence = opened.group(1)
            blocks.append((opened.group(2).lower(), []))
            prose.append("")
        elif fence is not None and line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
            fence = None
            prose.append("")
        elif fence is not None:
            blocks[-1][1].append((number, line))
            prose.append("")
        else:
            prose.append(line)
    return "\n".join(prose), blocks


def line_of(text, offset):
    return text.count("\n", 0, offset) + 1


def code_spans(path):
    """(line number, text) of every code span outside fenced blocks."""
    prose, _ = parsed(path)
    return [(line_of(prose, m.start()), m.group(2).strip()) for m in CODE_SPAN.finditer(prose)]


def command_texts(path):
    """(line number, text) of every piece of text that may hold a command: code spans (split at their own
    backticks: a span may quote a message that quotes a command), and the lines of shell blocks (with their
    continuation lines joined); in other blocks, the code spans of their comments."""
    texts = [(n, piece) for n, span in code_spans(path) for piece in span.split("`")]
    for language, lines in parsed(path)[1]:
        pending = None
        for number, line in lines:
            texts += [(number, m.group(2)) for m in CODE_SPAN.finditer(line)]
            if language not in SHELL_BLOCKS:
                continue
            if pending:
                line = pending[1] + " " + line
                number = pending[0]
            if line.rstrip().endswith("\\"):
                pending = (number, line.rstrip()[:-1])
                continue
            pending = None
            texts.append((number, line))
    return texts


def words(text):
    """Shell words of `text`, with `<placeholder>`s as one word and `[optional]` brackets and `...` dropped."""
    text = re.sub(r"<[^<>\s]*>", "X", text).replace("[", " ").replace("]", " ")
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return [w for w in lexer if w != "..."]
    except ValueError:  # an unbalanced quote: prose, not a command line
        return [w for w in text.split() if w != "..."]


def commands(tokens):
    """("fab" | "trainer", its arguments) for each command in a list of shell words."""
    found = []
    for i, token in enumerate(tokens):
        rest = tokens[i + 1:]
        if token == "fab" or token.endswith("/fab"):
            found.append(("fab", rest))
        elif (token in ("python", "python3") or token.endswith(("/python", "/python3"))) and rest[:2] == ["-m", "trainer"]:
            found.append(("trainer", rest[2:]))
        elif " " in token.strip():  # a quoted command: tmux new -s watch 'fab -H gpu1 watch'
            found += commands(words(token))
    return [(kind, next((args[:k] for k, w in enumerate(args) if w in SEPARATORS), args)) for kind, args in found]


def doc_commands(path):
    """(line number, kind, arguments) of every fab and trainer command the doc names."""
    return [(n, kind, args) for n, text in command_texts(path) for kind, args in commands(words(text))]


# --- what exists ---------------------------------------------------------------------------------

@functools.cache
def fab_tasks():
    """{task: ({flag name: Argument}, [positional Arguments])} from the fabfile's collection, and Fabric's
    core flags {name: Argument} (given before the tasks, or after them)."""
    from fabric.main import program

    spec = importlib.util.spec_from_file_location("facenet_fabfile_for_docs", ROOT / "fabfile.py")
    fabfile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fabfile)
    tasks = {}
    for name, task in fabfile.ns.tasks.items():
        arguments = task.get_arguments()
        tasks[name] = ({n: a for a in arguments for n in a.names}, [a for a in arguments if a.positional])
    core = {n: a for a in program.core_args() + program.task_args() for n in a.names}
    return tasks, core


@functools.cache
def trainer_commands():
    """{subcommand: {option string: takes a value}} from `python -m trainer`'s parser."""
    from trainer.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {opt: action.nargs != 0 for opt, action in parser._option_string_actions.items()}
            for name, parser in sub.choices.items()}


def check_fab(args):
    """(problems, [(task, flag name or None)] used) of one `fab ARGS`."""
    tasks, core = fab_tasks()
    problems, used, task, positionals = [], [], None, []
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if token.startswith("--") and len(token) > 2:
            names, attached = [token[2:].partition("=")[0]], "=" in token
        elif token.startswith("-") and len(token) > 1 and not token[1].isdigit():
            names, attached = list(token[1:]), False
        elif positionals:
            used.append((task, positionals.pop(0).names[0]))  # a flag name: run-a, not run_a
            continue
        elif token in tasks:
            task, positionals = token, list(tasks[token][1])
            used.append((task, None))
            continue
        else:
            problems.append(f"`fab {' '.join(args)}`: no task {token!r}" + (f" (after `{task}`, which takes no such argument)" if task else ""))
            break  # the rest is not read as tasks: one problem per command
        for k, name in enumerate(names):
            argument = (tasks[task][0].get(name) if task else None) or core.get(name)
            if argument is None:
                flag = f"--{name}" if len(name) > 1 else f"-{name}"
                problems.append(f"`fab {' '.join(args)}`: " + (f"task {task} has no flag {flag}" if task else f"fab has no option {flag}"))
                return problems, used  # its value, if any, would read as a task: one problem per command
            if task and name in tasks[task][0]:
                used.append((task, argument.names[0]))
            if argument.takes_value:
                value_follows = k == len(names) - 1 and not attached
                if value_follows and (not argument.optional or (i < len(args) and not args[i].startswith("-"))):
                    i += 1  # its value
                break
    return problems, used


def check_trainer(args):
    subcommands = trainer_commands()
    if not args:
        return []  # the program itself, named in prose
    if args[0] not in subcommands:
        return [f"`python -m trainer {' '.join(args)}`: no subcommand {args[0]!r} (one of {', '.join(subcommands)})"]
    options, problems, i = subcommands[args[0]], [], 1
    while i < len(args):
        token = args[i]
        i += 1
        if token.startswith("-") and len(token) > 1:
            option = token.partition("=")[0]
            if option not in options:
                problems.append(f"`python -m trainer {' '.join(args)}`: {args[0]} has no option {option}")
            elif options[option] and "=" not in token:
                i += 1
    return problems


# --- the tests -------------------------------------------------------------------------------------

@pytest.mark.parametrize("doc", USER_DOCS, ids=rel)
def test_every_command_the_doc_names_exists(doc):
    problems = []
    for number, kind, args in doc_commands(doc):
        found = check_fab(args)[0] if kind == "fab" else check_trainer(args)
        problems += [f"{rel(doc)}:{number}: {p}" for p in found]
    assert not problems, "commands that do not exist:\n" + "\n".join(problems)


def test_every_task_and_flag_is_documented():
    tasks, _ = fab_tasks()
    used = {pair for doc in USER_DOCS for _, kind, args in doc_commands(doc) if kind == "fab" for pair in check_fab(args)[1]}
    missing = [f"fab {task}" for task in tasks if (task, None) not in used]
    for task, (flags, _) in tasks.items():
        for name in sorted({argument.names[0] for argument in flags.values()}):
            if (task, name) not in used:
                missing.append(f"fab {task} --{name}")
    assert not missing, "tasks and flags that README.md and docs/*.md never show in a command:\n" + "\n".join(missing)


def _inventory_keys():
    from deploy.inventory.schema import DEFAULTS, HOST_KEYS

    def leaves(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict) and value:
                yield from leaves(value, f"{prefix}{key}.")
            elif key not in ("hosts", "clusters") or prefix:
                yield f"{prefix}{key}"

    return [*leaves(DEFAULTS), *(f"hosts.<name>.{key}" for key in HOST_KEYS), "clusters.<name>.hosts", "clusters.<name>.port"]


def test_every_inventory_key_is_in_docs_inventory():
    page = ROOT / "docs" / "inventory.md"
    documented = {w.strip() for _, span in code_spans(page) for w in span.split(",")}
    missing = [key for key in _inventory_keys() if key not in documented]
    assert not missing, f"{rel(page)} does not document these keys of deploy/inventory/schema.py: {', '.join(missing)}"


def slug(heading):
    """GitHub's anchor of a heading: its text, lower case, without punctuation but '-' and '_', spaces as '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.cache
def anchors(path):
    prose, _ = parsed(path)
    seen, found = {}, set()
    for line in prose.splitlines():
        heading = HEADING.match(line)
        if heading:
            base = slug(heading.group(2))
            found.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    return found


@pytest.mark.parametrize("doc", LINKING_DOCS, ids=rel)
def test_every_relative_link_resolves(doc):
    prose, _ = parsed(doc)
    text = CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), prose)  # links inside code are not links
    problems = []
    for link in LINK.finditer(text):
        target = link.group(1)
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:|//", target):
            continue  # https://..., mailto:
        where = f"{rel(doc)}:{line_of(text, link.start())}: ({target})"
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            problems.append(f"{where}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            problems.append(f"{where}: no heading #{anchor} in {rel(file)} (it has: {', '.join(sorted(anchors(file)))})")
    assert not problems, "broken links:\n" + "\n".join(problems)


@pytest.mark.parametrize("doc", USER_DOCS, ids=rel)
def test_pages_stay_short(doc):
    limit = README_MAX_LINES if doc.name == "README.md" else PAGE_MAX_LINES
    lines = len(doc.read_text().splitlines())
    assert lines <= limit, f"{rel(doc)} has {lines} lines, more than {limit}: move a topic to a page of its own"


def test_the_walkthrough_is_one_shell_block_under_its_heading():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert "## Walkthrough" in lines, "README.md has no `## Walkthrough` heading"
    after = [line for line in lines[lines.index("## Walkthrough") + 1:] if line.strip()]
    assert after and after[0].strip() == "```sh", "the line under `## Walkthrough` must open a ```sh block"
    block = after[1:after.index("```")] if "```" in after else []
    assert any(words(line)[:1] == ["fab"] for line in block), "the walkthrough's block holds no fab command"


@pytest.mark.parametrize("doc", USER_DOCS, ids=rel)
def test_user_docs_name_no_issue_numbers(doc):
    found = [f"{rel(doc)}:{n}: {line.strip()}" for n, line in enumerate(doc.read_text().splitlines(), 1)
             if re.search(r"\b[Ii]ssues? #?\d+", line)]
    assert not found, "user docs speak of the work's issues:\n" + "\n".join(found)
