"""Reading docs/reproduction.md's claims tables (shared by the experiments' tests)."""

from __future__ import annotations

import re

VERDICT_CELL = re.compile(
    r"^\*\*(holds|holds partly|does not hold|not reproduced here)\*\*(?::\s*(.*))?$"
)


def document_claims(text: str, section: str) -> dict[str, dict[str, tuple[str, str]]]:
    """{key: {"0": (verdict, numbers), "1": ...}} from the table between the
    `<!-- claims:SECTION -->` markers: one entry per verdict cell of a row, in
    column order, with the markdown escapes (`\\|`) of the numbers undone."""
    start = text.index(f"<!-- claims:{section} -->")
    end = text.index(f"<!-- /claims:{section} -->")
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for line in text[start:end].splitlines():
        m = re.match(r"^\|\s*`([a-z_+]+)`\s*\|", line)
        if not m:
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        verdicts = [VERDICT_CELL.match(c) for c in cells]
        out[m.group(1)] = {
            str(i): (v.group(1), v.group(2) or "")
            for i, v in enumerate(x for x in verdicts if x is not None)
        }
    return out
