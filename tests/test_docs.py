"""The documentation: a README read in five minutes, and no link in it or in docs/ that leads nowhere.

Links are checked as GitHub renders them: a relative link must name a file or folder of the
repository, and its ``#anchor`` must be the slug of a heading in the target file.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_BYTES = 12 * 1024

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"`[^`]*`")
# [text](target) or [text](target "title"); images too. The text may hold inline code.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...


def documentation_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line outside fenced code blocks."""
    lines, in_fence = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps only its text
    text = re.sub(r"<[^>]+>", "", text).lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in "-_ ")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file; repeated headings get -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(path: Path) -> list[str]:
    """'file:line: target (why)' for every relative link or anchor in ``path`` that leads nowhere."""
    problems = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if EXTERNAL.match(target):
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.name}:{number}: {target}"
            if not dest.exists():
                problems.append(f"{where} (no such file: {dest})")
            elif anchor and dest.is_file() and anchor not in anchors(dest):
                problems.append(f"{where} (no heading with anchor #{anchor} in {dest.name})")
    return problems


REPO_PATH = re.compile(
    r"`((?:model|indexer|engine|service|analyze|birdsearch|bench|tests|docker|docs|\.ci)/[\w./-]*)`"
)


def missing_repo_paths(path: Path) -> list[str]:
    """Files (with a suffix) and folders (ending in /) of the repository named in backticks that do not exist."""
    named = REPO_PATH.findall(path.read_text(encoding="utf-8"))
    return sorted({p for p in named if (Path(p).suffix or p.endswith("/")) and not (ROOT / p).exists()})


def test_readme_is_at_most_12_kb():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_MAX_BYTES, (
        f"README.md is {size} bytes, over {README_MAX_BYTES}: move detail to docs/ and link to it"
    )


def test_readme_holds_the_install_command_ci_runs():
    """CI installs with the README's command (in .ci/run, or in the Makefile it calls): the same text."""
    scripts = [ROOT / ".ci" / "run", ROOT / "Makefile"]
    text = "\n".join(p.read_text(encoding="utf-8") for p in scripts if p.exists())
    commands = [
        line.strip().replace("$(VENV)", ".venv") for line in text.splitlines() if "python3 -m venv" in line
    ]
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert commands, "no install command found in .ci/run or the Makefile"
    assert all(command in readme for command in commands), commands
    assert any(line.startswith(".venv/bin/pytest ") for line in readme), "the README's test command"


@pytest.mark.parametrize("path", documentation_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(path):
    assert broken_links(path) == []


@pytest.mark.parametrize("path", documentation_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_named_exists(path):
    """A renamed module or test must not leave the documentation pointing at its old name."""
    assert missing_repo_paths(path) == []


def test_docs_folder_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    unlinked = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"(docs/{p.name}" not in readme]
    assert unlinked == [], f"docs pages the README does not link to: {unlinked}"


def test_slugs_follow_github():
    assert slug("Reproducing the paper's SSW60 table with the real models") == (
        "reproducing-the-papers-ssw60-table-with-the-real-models"
    )
    assert slug("Query service: latency and throughput") == "query-service-latency-and-throughput"
    assert slug("Log-mel: `LogMel` against **the extractor**") == "log-mel-logmel-against-the-extractor"
    assert (
        slug("Toy world, small preset: ablation and control") == "toy-world-small-preset-ablation-and-control"
    )


def test_the_checker_finds_planted_broken_links(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Setup\n\n## Setup\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[fine](other.md#setup) [second](other.md#setup-1) [self](#page) [web](https://example.org/x)\n"
        "`[in code](missing.md)`\n"
        "```\n[in a fence](missing.md)\n```\n"
        "[gone](missing.md) [bad anchor](other.md#install) [bad self](#nowhere)\n",
        encoding="utf-8",
    )
    problems = broken_links(page)
    assert [p.split(": ", 1)[1].split(" (")[0] for p in problems] == [
        "missing.md",
        "other.md#install",
        "#nowhere",
    ]
    assert all(p.startswith("page.md:8: ") for p in problems)


def test_the_checker_finds_a_renamed_file(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "`model/mel.py` and `service/static/`, `service/gone.py`, `docker/gallery`\n", encoding="utf-8"
    )
    assert missing_repo_paths(page) == ["service/gone.py"]
