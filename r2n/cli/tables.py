"""The plain-text tables the r2n commands print (bench, ladder, profile)."""

from __future__ import annotations


def text_table(header, rows, right) -> str:
    """``header`` and ``rows`` (tuples of strings, one per column) as aligned
    columns two spaces apart, a rule of dashes under the header; the columns
    whose indices are in ``right`` are right-aligned (numbers)."""
    lines = [header, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for k, line in enumerate(lines):
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
