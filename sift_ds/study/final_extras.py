"""The figures of a run's final evaluation that a study reports beside its curves without comparing
them on the curves: the NSP loss and accuracy of ``mlm+nsp`` runs (``analysis.FINAL_EXTRAS``)."""
from __future__ import annotations

from typing import Dict, List

from .analysis import FINAL_EXTRAS, Curve, Spread, spread
from .tables import table


def _cell(s: Spread) -> str:
    return f"{s.mean:.4g} ± {s.std:.2g} [{s.lo:.4g}..{s.hi:.4g}]"


def extras_markdown(curves: Dict[str, List[Curve]]) -> List[str]:
    """The final NSP loss and accuracy per arm (mean ± std over seeds [min..max]), when runs have them."""
    keys = [k for k in FINAL_EXTRAS if any(k in c.extras for cs in curves.values() for c in cs)]
    if not keys:
        return []
    out = ["", "## Next-sentence prediction at the final evaluation", ""]
    rows = []
    for label, cs in curves.items():
        rows.append([label] + [_cell(spread([c.extras[k] for c in cs if k in c.extras])) for k in keys])
    return out + table(["arm"] + [f"{k} mean ± std [min..max]" for k in keys], rows)

