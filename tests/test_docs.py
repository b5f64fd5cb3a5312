"""Every relative link in the project's Markdown (README, docs, the model card, the reports) points at a file that
exists, and at a heading there when it names one."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted(
    [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("models/*/README.md"), *ROOT.glob("reports/**/*.md")]
)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(markdown: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", markdown.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    broken = []
    for target in LINK.findall(doc.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        linked = (doc.parent / path).resolve() if path else doc
        if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in anchors(linked)):
            broken.append(target)
    assert not broken, broken


ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
FOLDERS = ["training", "export", "serving/core", "serving", "scoring", "reporting", "loadtests"]
MODULE = re.compile(r"\b(\w+\.py)\b")


def modules(folder: str) -> set[str]:
    return {path.name for path in (ROOT / folder).glob("*.py") if path.name != "__init__.py"}


@pytest.mark.parametrize("folder", FOLDERS)
def test_the_architecture_table_names_each_module_of_a_folder(folder):
    """The folder table's row names every module the folder has, and no other."""
    (row,) = [line for line in ARCHITECTURE.read_text().splitlines() if line.startswith(f"| `{folder}/` |")]
    assert set(MODULE.findall(row.split(" | ")[1])) == modules(folder)


@pytest.mark.parametrize("folder", [folder for folder in FOLDERS if "/" not in folder])
def test_the_layout_at_a_glance_names_each_module_of_a_folder(folder):
    """Its entry for the folder (continuation lines included; `serving/` with its core) names the folder's modules."""
    layout = ARCHITECTURE.read_text().split("## Layout at a glance", 1)[1].split("```")[1]
    (entry,) = re.findall(rf"^{folder}/ .*?(?=^\S)", layout, re.S | re.M)
    expected = modules(folder) | (modules("serving/core") if folder == "serving" else set())
    assert set(MODULE.findall(entry)) == expected


def test_the_api_docs_list_every_setting():
    """docs/API.md's settings table names the environment variable of every `ServiceSettings` field."""
    import dataclasses

    from serving.settings import ServiceSettings

    table = (ROOT / "docs" / "API.md").read_text().split("## Limits and settings", 1)[1].split("\n## ", 1)[0]
    missing = [f.name.upper() for f in dataclasses.fields(ServiceSettings) if f"`{f.name.upper()}`" not in table]
    assert not missing
