"""The horizon study's one plot: each arm's budget-matched saving against training tokens, in
samples and in wall-clock, with intervals (the figures of ``sift_ds.study.horizon``)."""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from .analysis import AXES, METRICS
from .horizon import Horizon, arms_of


def plot(horizons: Sequence[Horizon], path: str) -> None:
    """Two panels (samples, wall-clock): each arm's saving at equal loss (solid) and equal accuracy
    (dashed) against training tokens, with intervals; open markers are bounds (off the frontier)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hs = sorted(horizons, key=lambda h: h.tokens)
    fig, panels = plt.subplots(1, len(AXES), figsize=(6 * len(AXES), 4.2), sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for panel, axis in zip(np.atleast_1d(panels), AXES):
        for i, arm in enumerate(arms_of(hs)):
            for metric, style, marker in zip(METRICS, ("-", "--"), ("o", "s")):
                pts = [(h.tokens, h.points[arm][(metric, axis)]) for h in hs if arm in h.points]
                inside = [(t, p) for t, p in pts if p.inside]
                colour = colours[i % len(colours)]
                if inside:
                    t = np.array([t for t, _ in inside], dtype=float)
                    y = np.array([p.saving for _, p in inside])
                    err = np.array([[p.saving - p.lo for _, p in inside], [p.hi - p.saving for _, p in inside]])
                    panel.errorbar(t, y, yerr=err, fmt=marker + style, color=colour, capsize=3,
                                   label=f"{arm}, equal {METRICS[metric][0].replace('val_', '')}")
                for t, p in pts:
                    if not p.inside and math.isfinite(p.saving):
                        panel.plot([t], [p.saving], marker, mfc="none", color=colour)
        panel.axhline(1.0, color="grey", lw=0.8)
        panel.set_xscale("log")
        panel.set_xlabel("training tokens (vanilla arm)")
        panel.set_title(f"budget-matched saving in {'samples' if axis == 'samples' else 'wall-clock'}")
    np.atleast_1d(panels)[0].set_ylabel("saving (x, vanilla frontier = 1)")
    np.atleast_1d(panels)[0].legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
