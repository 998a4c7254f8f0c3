"""The user's documentation speaks of the software, not of how it was made.

README.md, mkdocs.yml, every page under docs/ and the text the experiment writes into docs/results.md
are scanned for work-log wording (:data:`FORBIDDEN`); Ray's own technical terms pass. The README stays a
manual of at most 300 lines, and the MkDocs site builds with --strict, so every link between pages
resolves. The vocabulary is spelled from pieces below, so that this file does not itself read as a
work log."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 300

# The work-log words, spelled once from pieces (this file is code, not a log).
SESSION, SCRATCH, ISSUE = "sess" + "ion", "scr" + "atch", "iss" + "ue"
OUTSIDE, MACHINE = "../" + "shared", "/" + "work" + "/"

# (pattern, what it catches); case-insensitive.
FORBIDDEN = [
    # SESSION as a unit of work, not a technical term (the Ray one, its *_ folders, AWS_*_TOKEN, an SSH
    # one, the pytest fixture ray_*)
    (rf"(?<!ray )(?<!ssh )(?<![\w/]){SESSION}s?\b(?!_)", "a work " + SESSION),
    (rf"\b{SCRATCH}\b", f"a {SCRATCH} run"),
    (rf"\b{ISSUE}s?\s*#?\s*\d+", f"an {ISSUE} number"),
    (rf"\b{ISSUE}-\d+", f"an {ISSUE} number"),
    (r"(?<![\w&/#])#\d+\b", f"an {ISSUE} number"),
    (rf"\bthe {ISSUE}\b", f"the {ISSUE}"),
    (rf"\bthe {ISSUE}'s\b", f"the {ISSUE}"),
    (re.escape(OUTSIDE) + r"\b", "a path outside the repository"),
    (re.escape(MACHINE), "a path outside the repository"),
    (r"\bdesign card\b", "the making of the project"),
]
PATTERNS = [(re.compile(pattern, re.IGNORECASE), why) for pattern, why in FORBIDDEN]


def offences(text: str) -> list[str]:
    """Every forbidden phrase of ``text``, as 'line N: why: the line'."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for pattern, why in PATTERNS:
            if pattern.search(line):
                found.append(f"line {number}: {why}: {line.strip()[:160]}")
    return found


def documents() -> list[Path]:
    return [ROOT / "README.md", ROOT / "mkdocs.yml", *sorted((ROOT / "docs").rglob("*.md"))]


def test_the_patterns_catch_work_log_wording_and_spare_ray_terms():
    for bad in (f"measured in {SESSION} 11", f"this {SESSION}'s run", f"{SESSION.title()}s 4 and 5",
                f"({SCRATCH}, {SESSION} 10)", f"{SCRATCH} runs", f"({ISSUE} 16)", f"{ISSUE} #27", "#27",
                f"the {ISSUE}'s target", f"{ISSUE}-15 section", f"see `{OUTSIDE}/docs/design.md`",
                f"{MACHINE}main/README.md"):
        assert offences(bad), bad
    for good in (f"in the Ray {SESSION}'s log folder", f"`/tmp/ray/{SESSION}_*/logs/`",
                 f"`AWS_{SESSION.upper()}_TOKEN`", f"the `ray_{SESSION}` fixture",
                 f"`ray exec`, `ray attach` and SSH {SESSION}s", f"Ray {SESSION}s",
                 "report.html#predicted=sd&unknown=1", "a temporary folder", f"Ray {ISSUE}s and pitfalls",
                 "## Results"):
        assert not offences(good), good


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_documents_speak_of_the_software_not_of_how_it_was_made(path):
    assert not offences(path.read_text(encoding="utf-8")), "\n".join(offences(path.read_text(encoding="utf-8")))


def test_readme_is_a_manual_of_at_most_300_lines():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"


def test_readme_links_into_docs_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert local, "the README links to its docs pages"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, missing


def _string_constants(path: Path) -> list[str]:
    """Every string literal of a module: docstrings, f-string parts, headings it writes."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)]


@pytest.mark.parametrize("path", sorted((ROOT / "lab" / "latentsweep_lab" / "experiment").glob("*.py")), ids=lambda p: p.name)
def test_the_experiment_writes_no_work_log_wording(path):
    """What `latentsweep experiment --docs docs/results.md` can write is in these string literals."""
    found = [f"{why}: {text.strip()[:120]!r}" for text in _string_constants(path)
             for pattern, why in PATTERNS if pattern.search(text)]
    assert not found, found


def test_rendered_section_headings_match_the_checked_in_results():
    """The controlled section rendered from small inputs: its headings are clean and are the ones
    docs/results.md holds."""
    from latentsweep_lab.experiment import controlled_markdown

    metrics = {"top1": 0.5, "precision_at_10": 0.5, "map_at_10": 0.5, "map_full": 0.5, "vote_accuracy": 0.5,
               "type_top1": 0.5}
    controlled = controlled_markdown(
        [{"corpus": "zoo-shared", "features": "2lat", "query_set": "queries", "classes": 7, **metrics}],
        {"software_jpeg": [80, 95], "software_size": 192})
    rendered = "\n".join(controlled)
    assert not offences(rendered), offences(rendered)
    results = (ROOT / "docs" / "results.md").read_text(encoding="utf-8").splitlines()
    headings = [line for line in controlled if line.startswith("## ")]
    assert len(headings) == 1
    for heading in headings:
        assert heading in results, f"docs/results.md lacks the heading the experiment writes: {heading}"


def test_the_docs_site_builds_strictly(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (the test extra installs it: pip install -e '.[test]')")
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stdout + built.stderr
