"""README.md and docs/*.md: every relative link resolves (file, and heading for `#anchor` links, by
GitHub's anchor rules), README.md stays a front door (at most 15 KB), and its first two code blocks are
the demo command and the test command, the latter exactly what CI runs (.ci/run). No JAX needed."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_BYTES = 15 * 1024

DEMO_COMMAND = ("python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt && "
                ".venv/bin/python train.py --config configs/demo.py --workdir /tmp/demo")

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def split_fences(text: str) -> tuple[list[str], list[str]]:
    """(the lines outside fenced code blocks, the fenced code blocks' contents in order)."""
    prose, blocks, fence, block = [], [], None, []
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence, block = match.group(1), []
            else:
                prose.append(line)
        elif match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) \
                and not line.strip()[len(match.group(1)):].strip():
            blocks.append("\n".join(block))
            fence = None
        else:
            block.append(line)
    return prose, blocks


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup links reduced to their text, lowercase, punctuation other
    than '-' and '_' removed, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    """Every heading anchor of a Markdown file; repeated headings get -1, -2, ... as on GitHub."""
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    result = set()
    for line in prose:
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def links(path: pathlib.Path) -> list[str]:
    """The link targets of a Markdown file, outside code blocks and inline code."""
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    targets = []
    for line in prose:
        targets += LINK.findall(INLINE_CODE.sub("", line))
    return targets


def is_external(target: str) -> bool:
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) is not None or target.startswith("//")


def test_pages_exist():
    names = {page.name for page in PAGES}
    for name in ("segmentation.md", "masked-image-modeling.md", "performance.md", "data.md", "multi-host.md",
                 "checkpoints.md", "architecture.md"):
        assert name in names, f"docs/{name} is missing"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in links(page):
        if is_external(target):
            continue
        file_part, _, anchor = target.partition("#")
        destination = (page.parent / file_part).resolve() if file_part else page
        if not destination.exists():
            broken.append(f"{target}: {destination.relative_to(ROOT) if destination.is_relative_to(ROOT) else destination} does not exist")
            continue
        if anchor:
            if destination.suffix != ".md" or destination.is_dir():
                broken.append(f"{target}: an anchor into a file that is not Markdown")
            elif anchor not in anchors(destination):
                broken.append(f"{target}: no heading with the anchor #{anchor} in {destination.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_pages_start_with_a_command():
    """Each docs page opens with what a user runs: a code block right after the title (one paragraph
    of at most a sentence or two may come between)."""
    for page in PAGES[1:]:
        lines = page.read_text(encoding="utf-8").splitlines()
        assert lines and lines[0].startswith("# "), f"{page.name}: no title on the first line"
        before = []
        for line in lines[1:]:
            if FENCE.match(line):
                break
            assert not HEADING.match(line), f"{page.name}: a heading before the first code block"
            before.append(line)
        else:
            pytest.fail(f"{page.name}: no code block")
        assert len(" ".join(before).split()) <= 60, f"{page.name}: too much text before the first code block"


def test_readme_size():
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes, over {README_MAX_BYTES}: move detail to docs/"


def ci_test_command() -> str:
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
             if "pytest" in line and not line.lstrip().startswith("#")]
    assert len(lines) == 1, f".ci/run should hold one pytest command line, found {lines}"
    return lines[0]


def test_readme_starts_with_the_demo_and_test_commands():
    _, blocks = split_fences(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 2, "README.md needs the demo and test commands as its first two code blocks"
    assert blocks[0].strip() == DEMO_COMMAND
    assert blocks[1].strip() == ci_test_command()


def test_slug_rules():
    assert slug("Checkpoints, resume and preemption") == "checkpoints-resume-and-preemption"
    assert slug("What each helper of `layers.py` buys") == "what-each-helper-of-layerspy-buys"
    assert slug("Semantic segmentation (UPerNet)") == "semantic-segmentation-upernet"
    assert slug("snake_case and-dash") == "snake_case-and-dash"
