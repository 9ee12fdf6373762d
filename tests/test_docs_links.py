"""The README and docs/ stay linked up: relative links and anchors resolve, named examples exist.

Also keeps the README short and its Quick start commands exactly as CI runs them.
No Ray, no network: this reads Markdown files only.
"""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
README_MAX_LINES = 200

# The Quick start's two commands, copied from the README: a contract CI checks (.ci/run runs command 2).
QUICK_START_COMMAND_1 = (
    "python3 -m pip install -e . && servectl -C examples/quickstart apply --auto-approve "
    "&& curl -s http://127.0.0.1:8000/hello"
)
QUICK_START_COMMAND_2 = (
    'apt-get update -q && apt-get install -y -q iproute2 haproxy && python3 -m pip install -q -e ".[test]" '
    "&& python3 -m pytest -q"
)

FENCE = re.compile(r"^(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
EXAMPLE = re.compile(r"examples/([A-Za-z0-9_.-]+)")


def markdown_files() -> list[Path]:
    """README.md and every Markdown file under docs/."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code spans blanked out."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, INLINE_CODE.sub("", line)))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped (but '-' and '_'), spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors on its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 … suffixes for repeated headings."""
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links() -> list[str]:
    """``file:line target (why)`` for every relative link that does not resolve."""
    problems = []
    for path in markdown_files():
        for number, line in prose_lines(path.read_text(encoding="utf-8")):
            for target in LINK.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
                    continue
                where = f"{path.relative_to(REPO)}:{number} {target}"
                file_part, _, anchor = target.partition("#")
                resolved = (path.parent / file_part).resolve() if file_part else path
                if not resolved.exists():
                    problems.append(f"{where} (no such file)")
                    continue
                if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                    problems.append(f"{where} (no heading with that anchor)")
    return problems


def test_relative_links_and_anchors_resolve():
    problems = broken_links()
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_named_examples_exist():
    missing = []
    for path in markdown_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for name in EXAMPLE.findall(line):
                if not (REPO / "examples" / name).exists():
                    missing.append(f"{path.relative_to(REPO)}:{number} examples/{name}")
    assert not missing, "examples named but not in examples/:\n" + "\n".join(missing)


def test_docs_pages_exist_and_say_what_they_are_for():
    pages = sorted(DOCS.rglob("*.md"))
    assert pages, "docs/ has no pages"
    for page in pages:
        lines = [line for line in page.read_text(encoding="utf-8").splitlines() if line.strip()]
        assert lines[0].startswith("# "), f"{page.relative_to(REPO)}: starts without a title"
        assert lines[1].startswith("Purpose: "), f"{page.relative_to(REPO)}: no one-line purpose under the title"


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_quick_start_commands_unchanged():
    text = README.read_text(encoding="utf-8")
    start = text.index("## Quick start")
    block = text[text.index("```sh\n", start):]
    block = block[: block.index("\n```", 5)]
    commands = [line for line in block.splitlines()[1:] if line.strip() and not line.startswith("#")]
    assert commands == [QUICK_START_COMMAND_1, QUICK_START_COMMAND_2]


def test_slug_follows_github_rules():
    assert slug("`Backend(name, code, *init_args, **settings)`") == "backendname-code-init_args-settings"
    assert slug("No request gets around an endpoint's policy") == "no-request-gets-around-an-endpoints-policy"
    assert slug("`rollout --json`") == "rollout---json"
    assert slug("Progressive delivery: `Rollout`") == "progressive-delivery-rollout"
