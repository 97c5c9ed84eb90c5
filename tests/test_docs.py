"""The README and docs/*.md stay true to the repository:

- every relative Markdown link points to an existing file, and its `#anchor` to a heading of the
  target (GitHub's slug rules);
- every repository command in a ```bash block (`python -m <module> [subcommand] --flag`,
  `python bench/<x>.py --flag`, `bash scripts/<x>.sh --flag`) names an existing module or script,
  and each `--flag` appears in that command's `--help` (a shell script: in its text);
- the README is short, and no page talks about issues or one development machine;
- every environment variable the typed settings models declare is documented in docs/operations.md,
  whose settings table is the one scripts/settings_table.py generates.
"""
from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 260
HELP_TIMEOUT_S = 60

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```(\w*)\s*$")
# Words a reader cannot check: an issue tracker they do not see, one machine they do not have.
FORBIDDEN = re.compile(r"\bissues?\b|\bthis vm\b|\bthe lent machine\b", re.IGNORECASE)
PYTHON = re.compile(r"^(?:\S*/)?python(?:3(?:\.\d+)?)?$")


def _page_id(path: Path) -> str:
    return str(path.relative_to(REPO))


def _outside_fences(text: str) -> list[str]:
    """The page's lines outside fenced code blocks (a `# comment` there is no heading)."""
    kept, fenced = [], False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            kept.append(line)
    return kept


def _outside_code(text: str) -> str:
    """The page without fenced code blocks and inline code, where `[x](y)` is not a link."""
    return "\n".join(re.sub(r"`[^`]*`", "", line) for line in _outside_fences(text))


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading: its text
    text = text.lower()
    text = re.sub(r"[^\w\- ]", "", text)  # keeps letters, digits, _, - and spaces (unicode-aware)
    return text.replace(" ", "-")


@functools.cache
def anchors(path: Path) -> frozenset[str]:
    """Every heading anchor of a Markdown file, numbered as GitHub numbers repeats (-1, -2...)."""
    seen: dict[str, int] = {}
    found = set()
    for line in _outside_fences(path.read_text(encoding="utf-8")):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = github_slug(match.group(1))
        count = seen.get(slug, 0)
        found.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return frozenset(found)


def broken_links(page: Path) -> list[str]:
    problems = []
    for target in LINK.findall(_outside_code(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (page.parent / file_part).resolve() if file_part else page
        if not linked.exists():
            problems.append(f"{target}: no file {linked}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{target}: no heading #{anchor} in {linked.name}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_relative_links_and_anchors_resolve(page):
    assert not broken_links(page), broken_links(page)


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "other.md").write_text("# A heading, with `code`\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-heading-with-code) [gone](missing.md) [bad](other.md#nope) "
                    "`[in code](missing.md)`\n")
    assert [p.split(":")[0] for p in broken_links(page)] == ["missing.md", "other.md#nope"]


# ------------------------------------------------------------------ commands in ```bash blocks


def bash_commands(text: str) -> list[str]:
    """The command lines of a page's ```bash blocks: continuations joined, comments dropped."""
    commands, block, fenced = [], [], None
    for line in text.splitlines():
        fence = FENCE.match(line.strip())
        if fence and fenced is None:
            fenced, block = fence.group(1), []
            continue
        if line.strip() == "```" and fenced is not None:
            if fenced in ("bash", "sh", "shell"):
                joined = "\n".join(block).replace("\\\n", " ")
                commands += [c for c in (re.sub(r"(^|\s)#.*$", "", raw).strip() for raw in joined.splitlines()) if c]
            fenced = None
            continue
        if fenced is not None:
            block.append(line)
    return commands


def repo_invocations(command: str) -> list[tuple[str, list[str]]]:
    """(what, arguments) for each repository CLI a command line runs: ("module:search.index", [...]),
    ("script:bench/scale.py", [...]), ("shell:scripts/test.sh", [...])."""
    found = []
    for part in re.split(r"\s*(?:&&|\|\||;|\|)\s*", command):
        try:
            words = shlex.split(part)
        except ValueError:
            words = part.split()
        for i, word in enumerate(words):
            rest = words[i + 1:]
            if PYTHON.match(word) and rest[:1] == ["-m"] and len(rest) > 1:
                found.append((f"module:{rest[1]}", rest[2:]))
                break
            if PYTHON.match(word) and rest and rest[0].endswith(".py") and not rest[0].startswith("-"):
                found.append((f"script:{rest[0]}", rest[1:]))
                break
            if word == "bash" and rest and rest[0].endswith(".sh"):
                found.append((f"shell:{rest[0]}", rest[1:]))
                break
    return found


def _flags(arguments: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in arguments if re.match(r"^--[a-z]", a)]


@functools.cache
def help_text(*argv: str) -> tuple[int, str]:
    """`python argv... --help` in the repository, its exit status and output (cached)."""
    done = subprocess.run([sys.executable, *argv, "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=HELP_TIMEOUT_S)
    return done.returncode, done.stdout + done.stderr


def _subcommands(help_output: str) -> set[str]:
    match = re.search(r"\{([\w,-]+)\}", help_output)
    return set(match.group(1).split(",")) if match else set()


def command_problems(what: str, arguments: list[str]) -> list[str]:
    """Why a documented invocation would not run as shown (an empty list: it would)."""
    kind, name = what.split(":", 1)
    flags = _flags(arguments)
    if kind == "shell":
        script = REPO / name
        if not script.is_file():
            return [f"{name}: no such script"]
        text = script.read_text(encoding="utf-8")
        return [f"{name}: {flag} does not appear in the script" for flag in flags
                if not re.search(re.escape(flag) + r"(?![\w-])", text)]
    if kind == "script":
        if not (REPO / name).is_file():
            return [f"{name}: no such script"]
        argv = (name,)
    else:
        top = name.split(".", 1)[0]
        if not ((REPO / top).is_dir() or (REPO / f"{top}.py").is_file()):
            return []  # not a repository module (pip, ray...): not ours to check
        module_path = REPO / Path(*name.split("."))
        if not (module_path.with_suffix(".py").is_file() or (module_path / "__main__.py").is_file()):
            return [f"python -m {name}: no such module"]
        argv = ("-m", name)
    status, output = help_text(*argv)
    positional = next((a for a in arguments if not a.startswith("-")), None)
    if positional is not None and arguments and arguments[0] == positional and positional in _subcommands(output):
        argv, (status, output) = (*argv, positional), help_text(*argv, positional)
    if not flags:
        return []
    if status != 0:
        return [f"{' '.join(argv)} --help failed ({status}): {output[-300:]}"]
    return [f"{' '.join(argv)}: {flag} is not in its --help" for flag in flags
            if not re.search(re.escape(flag) + r"(?![\w-])", output)]


def documented_invocations() -> list[tuple[str, str, list[str]]]:
    return [(_page_id(page), what, arguments) for page in PAGES
            for command in bash_commands(page.read_text(encoding="utf-8"))
            for what, arguments in repo_invocations(command)]


def test_pages_show_repository_commands():
    shown = {what for _, what, _ in documented_invocations()}
    assert {"module:search.index", "shell:scripts/test.sh", "shell:scripts/run-local.sh"} <= shown, shown
    assert any(what.startswith("script:bench/") for what in shown), shown


def test_every_documented_command_exists_and_takes_its_flags():
    problems = sorted({f"{page}: {problem}" for page, what, arguments in documented_invocations()
                       for problem in command_problems(what, arguments)})
    assert not problems, "\n".join(problems)


def test_an_unknown_module_script_or_flag_is_found():
    assert command_problems("module:search.index", ["build", "--catalog", "C", "--no-such-flag"]) == [
        "-m search.index build: --no-such-flag is not in its --help"]
    assert command_problems("module:search.index", ["build", "--catalog", "C", "--update"]) == []
    assert command_problems("module:search.no_such_module", []) == ["python -m search.no_such_module: no such module"]
    assert command_problems("script:bench/no_such.py", []) == ["bench/no_such.py: no such script"]
    assert command_problems("shell:scripts/test.sh", ["--no-such-flag"]) == [
        "scripts/test.sh: --no-such-flag does not appear in the script"]
    [(what, arguments)] = repo_invocations("SEARCH_BACKEND=faiss .venv/bin/python -m search.index ann --index D")
    assert (what, _flags(arguments)) == ("module:search.index", ["--index"])


# ------------------------------------------------------------------ length and wording


def test_the_readme_is_short():
    lines = (REPO / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_no_page_refers_to_issues_or_one_machine(page):
    hits = [f"{number}: {line.strip()}" for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
            if FORBIDDEN.search(line)]
    assert not hits, hits


def test_the_wording_check_catches_what_it_should():
    assert FORBIDDEN.search("as the Issue said") and FORBIDDEN.search("measured on This VM")
    assert FORBIDDEN.search("copied to the lent machine")
    assert not FORBIDDEN.search("tissues and reissued files")


# ------------------------------------------------------------------ settings


def _settings_table():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import settings_table
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return settings_table


def test_every_setting_is_documented_in_operations():
    from bgremoval.config import BgConfig
    from search.config import SearchConfig

    operations = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    declared = set(BgConfig.variables()) | set(SearchConfig.variables())
    assert len(declared) > 50  # the models were enumerated, not an empty set
    missing = sorted(name for name in declared if f"`{name}`" not in operations)
    assert not missing, f"docs/operations.md does not document {missing}"


def test_the_operations_settings_table_is_the_generated_one():
    text = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    assert _settings_table().replaced(text) == text, \
        "run `python scripts/settings_table.py --readme docs/operations.md`"
