"""What a criterion keeps and drops: kept against dropped blocks by length, unique-token share,
unigram entropy and the share of code, markup, tables and non-Latin text, with example texts
(``launch/kept_dropped.py``).

The detectors work on a block's decoded text (WordPiece decoding: tokens separated by spaces,
line breaks lost), so they look at characters and token patterns, not at layout:

* **code**: at least ``CODE_MIN`` of the non-space characters, and at least ``CODE_DENSITY`` of them,
  are among ``{ } [ ] ; = _ * &`` (prose stays near 0.01; C, shell and config snippets run at 0.08
  and more; parentheses, angle brackets and bars are left out, as are rules of ``-``, ``=``, ``+``:
  prose, markup, titles and tables use them);
* **markup**: at least ``MARKUP_HITS`` matches of a tag (``< tag``, ``< / tag``), a roff request or
  font escape (``.TH``, ``.SH``, ``\\fB``), or a reStructuredText / Markdown construct (``..``
  directive, ``:role:``, ``**``, ``##``);
* **table**: at least ``TABLE_BARS`` column bars ``|``, or at least ``TABLE_RULES`` rules (runs of six or
  more ``-``, ``=`` or ``+``): a grid or simple reStructuredText table has a rule above, below and
  under its header, where a section title's underline (and overline) makes one or two.

* **non_latin**: at least ``NON_LATIN`` of the non-space characters are outside ASCII (a translation
  into Chinese, Japanese, Russian, ...).

A block can be several of these at once; the shares are per kind.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import numpy as np

from ..offline.text_stats import text_tokens, unigram_entropy, unique_share

CODE_CHARS = frozenset("{}[];=_*&")
CODE_DENSITY = 0.06
CODE_MIN = 4
MARKUP = re.compile(r"<\s*/?\s*[A-Za-z][A-Za-z0-9]*|(?:^|\s)\.\s?[A-Z]{1,2}\b|\\\s?f\s?[BIRP]|\.\.\s+[a-z]+\s*::|"
                    r":\s?[a-z]+\s?:|\*\s?\*|#\s?#")
MARKUP_HITS = 3
TABLE_RULE = re.compile(r"(?:[-=+]\s*){6,}")
TABLE_BARS = 4
TABLE_RULES = 3
NON_LATIN = 0.5
KINDS = ("code", "markup", "table", "non_latin")
MEASURES = ("length", "documents", "unique_share", "unigram_entropy") + tuple(f"{k}_share" for k in KINDS)


def is_code(text: str) -> bool:
    chars = [c for c in TABLE_RULE.sub(" ", text) if not c.isspace()]  # rules (underlines, table borders) aside
    hits = sum(c in CODE_CHARS for c in chars)
    return hits >= CODE_MIN and hits / len(chars) >= CODE_DENSITY


def is_markup(text: str) -> bool:
    return len(MARKUP.findall(text)) >= MARKUP_HITS


def is_table(text: str) -> bool:
    return text.count("|") >= TABLE_BARS or len(TABLE_RULE.findall(text)) >= TABLE_RULES


def is_non_latin(text: str) -> bool:
    chars = [c for c in text if not c.isspace()]
    return bool(chars) and sum(not c.isascii() for c in chars) / len(chars) >= NON_LATIN


def text_kinds(text: str) -> Dict[str, bool]:
    return {"code": is_code(text), "markup": is_markup(text), "table": is_table(text), "non_latin": is_non_latin(text)}


def block_profile(ids: np.ndarray, special: np.ndarray, text: str) -> Dict[str, float]:
    """The measures of one block: its text tokens' count (``length``: packed blocks are full, so it
    varies with document breaks and padding only), the documents it holds (special tokens between its
    first and last position, plus one), its unique share and unigram entropy, and which kinds its
    decoded text is (1.0 / 0.0)."""
    tokens = text_tokens(ids, special)
    kinds = text_kinds(text)
    documents = float(np.sum(np.asarray(special)[1:-1]) + 1) if special is not None else 1.0
    return {"length": float(len(tokens)), "documents": documents, "unique_share": unique_share(tokens),
            "unigram_entropy": unigram_entropy(tokens), **{f"{k}_share": float(kinds[k]) for k in KINDS}}


@dataclass
class KeptDropped:
    """Mean of every measure over the kept and the dropped blocks, their counts, and example texts."""

    kept: Dict[str, float]
    dropped: Dict[str, float]
    counts: Dict[str, int]
    examples: Dict[str, List[str]] = field(default_factory=dict)

    def table(self) -> str:
        """A Markdown table: measure | kept | dropped | kept - dropped."""
        lines = [f"| measure | kept ({self.counts['kept']}) | dropped ({self.counts['dropped']}) | kept - dropped |",
                 "|---|---:|---:|---:|"]
        for m in MEASURES:
            lines.append(f"| {m} | {self.kept[m]:.4g} | {self.dropped[m]:.4g} | {self.kept[m] - self.dropped[m]:+.3g} |")
        return "\n".join(lines)


def compare(profiles: Sequence[Dict[str, float]], kept: Sequence[bool], texts: Sequence[str],
            examples: int = 3, width: int = 300) -> KeptDropped:
    """Kept against dropped over blocks with ``profiles`` (``block_profile``) and the ``kept`` flags;
    the first ``examples`` texts of each side, cut to ``width`` characters."""
    kept = np.asarray(kept, dtype=bool)
    if kept.all() or not kept.any():
        raise ValueError("kept and dropped blocks are both needed to compare them")
    values = {m: np.array([p[m] for p in profiles], dtype=np.float64) for m in MEASURES}
    side = {"kept": kept, "dropped": ~kept}
    means = {name: {m: float(values[m][mask].mean()) for m in MEASURES} for name, mask in side.items()}
    shown = {name: [texts[i][:width] for i in np.flatnonzero(mask)[:examples]] for name, mask in side.items()}
    return KeptDropped(means["kept"], means["dropped"], {k: int(v.sum()) for k, v in side.items()}, shown)


def kept_agreement(blocks: np.ndarray, kept: np.ndarray, other_blocks: np.ndarray, other_kept: np.ndarray) -> float:
    """The share of the other selection's kept rows that this one keeps too, over the same gross
    batches (0.5: chance at keep ratio 0.5; 1: the same rows)."""
    if not np.array_equal(np.asarray(blocks), np.asarray(other_blocks)):
        raise ValueError("the two selections are over different blocks: use the same run arguments and batches")
    other_kept = np.asarray(other_kept, dtype=bool)
    return float((np.asarray(kept, dtype=bool) & other_kept).sum() / max(1, other_kept.sum()))


def one_line(text: str) -> str:
    """An example text as one line of Markdown code (its backticks turned into quotes)."""
    return " ".join(text.replace("`", "'").split())


def report(result: KeptDropped, title: str) -> str:
    """The table and the examples as Markdown."""
    parts = [f"### {title}", "", result.table(), ""]
    for name in ("kept", "dropped"):
        parts.append(f"Examples, {name}:")
        parts.append("")
        parts += [f"* `{one_line(t)}`" for t in result.examples[name]]
        parts.append("")
    return "\n".join(parts)
