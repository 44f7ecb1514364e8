"""The documentation holds together: every relative link and #anchor in README.md and docs/*.md
resolves, README stays a first-hour page, and its first command is the install + quickstart that
CI runs verbatim (.ci/run)."""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

import pytest

from search.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
QUICKSTART = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e ."
    " && search run study_configs/digits.yaml"
)
TEST_COMMAND = (
    'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev,postgres,tensorboard,app,onnx]"'
    " && python -m pytest -q"
)
MAX_README_LINES = 250

_FENCE = re.compile(r"^\s*(```|~~~)")
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _prose_lines(text: str) -> list[str]:
    """The lines of a markdown text outside fenced code blocks and HTML comments."""
    lines, fenced = [], False
    for line in _COMMENT.sub("", text).splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text lowercased, punctuation dropped, each
    space a hyphen (``Performance — pruning`` -> ``performance--pruning``)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").replace("*", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(md: Path) -> set[str]:
    """Every #anchor a markdown file's headings give (repeated headings get -1, -2, ...)."""
    seen: Counter[str] = Counter()
    found = set()
    for line in _prose_lines(md.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if match is None:
            continue
        base = slug(match.group(2))
        found.add(base if seen[base] == 0 else f"{base}-{seen[base]}")
        seen[base] += 1
    return found


def links(md: Path) -> list[str]:
    """The link and image targets of a markdown file, outside code blocks and code spans."""
    targets = []
    for line in _prose_lines(md.read_text(encoding="utf-8")):
        targets += _LINK.findall(_CODE_SPAN.sub("", line))
    return targets


def broken_links(md: Path, root: Path) -> list[str]:
    """The relative links of ``md`` that do not resolve: a missing file or folder, a path outside
    ``root``, or an #anchor that no heading of the markdown file it points into gives."""
    broken = []
    for target in links(md):
        if _SCHEME.match(target):  # https:, mailto:
            continue
        path_part, _, fragment = target.partition("#")
        dest = (md.parent / path_part).resolve() if path_part else md.resolve()
        if not dest.is_relative_to(root.resolve()) or not dest.exists():
            broken.append(f"{target} (no such file in the repository)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target} (no heading #{fragment} in {dest.name})")
    return broken


def first_bash_block(text: str) -> list[str]:
    """The lines of the first block fenced exactly by ```bash and ```, as .ci/run extracts it."""
    lines = text.splitlines()
    start = lines.index("```bash") + 1
    return lines[start : lines.index("```", start)]


@pytest.mark.parametrize("md", [README, *DOCS], ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(md: Path) -> None:
    assert broken_links(md, REPO) == []


def test_readme_links_every_page_of_docs() -> None:
    linked = {(REPO / t.partition("#")[0]).resolve() for t in links(README) if not _SCHEME.match(t)}
    assert [p.name for p in DOCS if p.resolve() not in linked] == []
    assert (REPO / "docs" / "config.md").resolve() in linked  # the config reference (generated)


def test_the_link_checker_finds_broken_files_anchors_and_paths_outside(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("# Real heading\n\n## Performance — pruning\n\n## Real heading\n")
    page = tmp_path / "docs" / "a.md"
    page.write_text(
        "# Top `heading`\n\n"
        "[ok](b.md#real-heading) [twice](b.md#real-heading-1) [dash](b.md#performance--pruning)\n"
        "![img](b.md) [self](#top-heading) [web](https://example.com/x.md#nope)\n"
        "[missing file](missing.md) [bad anchor](b.md#nope) [self bad](#nah) [outside](../../x.md)\n"
        "`[in a code span](missing-span.md)`\n"
        "<!-- [in a comment](missing-comment.md) -->\n"
        "```\n[in code](missing-code.md)\n```\n"
    )
    (tmp_path / "x.md").write_text("# x\n")  # exists, but outside the root checked below
    assert broken_links(page, tmp_path / "docs") == [
        "missing.md (no such file in the repository)",
        "b.md#nope (no heading #nope in b.md)",
        "#nah (no heading #nah in a.md)",
        "../../x.md (no such file in the repository)",
    ]


def test_readme_is_at_most_250_lines() -> None:
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; the reference belongs in docs/"


def test_readmes_first_bash_block_is_the_install_and_quickstart() -> None:
    assert first_bash_block(README.read_text(encoding="utf-8")) == [QUICKSTART]


def test_readme_lists_every_command_and_the_test_command() -> None:
    readme = README.read_text(encoding="utf-8")
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    commands = list(sub.choices)
    assert len(commands) >= 13
    assert [c for c in commands if f"| `search {c}" not in readme] == []
    assert TEST_COMMAND in readme and "bash .ci/run" in readme


def test_the_quickstart_config_and_readme_give_the_same_time() -> None:
    comment = (REPO / "study_configs" / "digits.yaml").read_text(encoding="utf-8").splitlines()[1]
    readme = " ".join(README.read_text(encoding="utf-8").split())
    stated = re.search(r"about \d+ s on 2 (?:quiet )?CPU cores", comment)
    assert stated, f"digits.yaml's second line states no time: {comment!r}"
    assert stated.group(0) in readme
