"""The README and docs/ stay true to the tree: the Layout names every module and subpackage of
dynsys, and every relative link (and #anchor) in README.md and docs/*.md leads somewhere."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def layout_words() -> set[str]:
    """The words of the README's Layout block: module stems and `name/` for packages."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Layout\n.*?```text\n(.*?)```", readme, re.S).group(1)
    return {w.removesuffix(".py").strip(";,()") for w in block.split()}


def test_layout_names_every_module_and_subpackage():
    words = layout_words()
    missing = []
    for path in sorted((ROOT / "dynsys").rglob("*.py")):
        parts = path.relative_to(ROOT / "dynsys").parts
        if path.name.startswith("_"):
            continue
        if len(parts) == 1:
            wanted = path.stem  # dynsys/runs.py
        elif len(parts) == 2:
            wanted = path.stem  # dynsys/nn/sites.py, listed on the nn/ line
        else:
            wanted = parts[1] + "/"  # dynsys/theory/history/bound.py: the subpackage
        if wanted not in words:
            missing.append(str(path.relative_to(ROOT)))
    missing += [f"dynsys/{d.name}/" for d in sorted((ROOT / "dynsys").iterdir())
                if d.is_dir() and (d / "__init__.py").exists() and f"{d.name}/" not in words]
    assert not missing, f"README Layout does not name: {missing}"


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    targets = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r"^\[[^\]]+\]: (\S+)$", text, re.M)
    broken = []
    for target in targets:
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in anchors(dest)):
            broken.append(target)
    assert not broken, f"{page.name}: {broken}"
