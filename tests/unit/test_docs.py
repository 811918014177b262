"""The project's own documents: every `docs/<file>.md §N` a code file, config or test cites names a section that
document has, and no file cites a document outside the repository."""

from __future__ import annotations

import re

from tests.conftest import REPO

CITING = [
    p
    for p in REPO.rglob("*")
    if p.suffix in (".py", ".yaml", ".smk", ".md", ".sh")
    and p.is_file()
    and not {".venv", ".snakemake", "data", ".git"} & set(p.relative_to(REPO).parts)
]


def _sections(doc: str) -> set[str]:
    heads = re.findall(r"^#+\s+(\d+(?:\.\d+)*)\.?\s", (REPO / "docs" / doc).read_text(), re.M)
    return set(heads)


def test_every_cited_section_exists():
    cites = []
    for path in CITING:
        text = path.read_text(errors="replace")
        for doc, first, rest in re.findall(r"docs/(\w+\.md) (§[\d.]+(?:-[\d.]+)?)((?:, §[\d.]+)*)", text):
            for sec in re.findall(r"§([\d.]+)", first + rest):
                cites.append((path.relative_to(REPO), doc, sec.rstrip(".")))
    assert len(cites) > 20
    missing = [c for c in cites if c[2] not in _sections(c[1])]
    assert not missing, missing


def test_no_file_cites_a_document_outside_the_repository():
    outside = re.compile(r"(\.\./shared|reference/(esvit|datasets)\.md|(?<!docs/)DESIGN\.md|(?<![\w/])reference §)")
    bad = [
        str(p.relative_to(REPO))
        for p in CITING
        if p.name != "test_docs.py" and outside.search(p.read_text(errors="replace"))
    ]
    assert not bad, bad
