"""The end-to-end study's settings and report (``launch/run_mlm_study.py``): every run's final
model scored on the fixed evaluation set (``fixed_eval``) against its training seconds, and each
arm's budget-matched speed-up over the frontier of ``run_mlm.py`` runs (``frontier``), read
linearly and in log(cost) between budgets; the speed-up split into the head's, SIFT's and the
front-end's shares; and the same split for BERT-base modelled from FLOPs (``flops_model``)."""
from __future__ import annotations

import csv
import glob
import json
import math
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from transformers import BertConfig

from ..config import SiftConfig
from . import flops_model, frontier
from .analysis import METRICS, Curve
from .run_mlm_arms import Arm
from .tables import table as _table

READINGS = (frontier.LINEAR, frontier.LOG)
STUDY_FILE = "run_mlm_study.json"  # the command and settings, in --out (not compare.py's study.json)
ROLES = {  # arm -> what it is, in the report
    "job": "DeepSpeed job, masked-only head",
    "job_sift": "DeepSpeed job, masked-only head, SIFT",
    "trainer_sparse": "SiftTrainer (run_mlm_sift.py), masked-only head",
    "trainer_sparse_sift": "SiftTrainer (run_mlm_sift.py), masked-only head, SIFT",
}
# (name, numerator arm, denominator arm or None for the run_mlm.py frontier): the shares of the speed-up
DECOMPOSITION = (
    ("masked-only head (Trainer, SIFT off)", "trainer_sparse", None),
    ("SIFT within Trainer", "trainer_sparse_sift", "trainer_sparse"),
    ("DeepSpeed job over Trainer (SIFT off)", "job", "trainer_sparse"),
    ("SIFT within the DeepSpeed job", "job_sift", "job"),
)


def study_settings(ds_config: str, sift_json: str) -> Tuple[dict, dict]:
    """(the ds_config's "pretrain" section, ``StudyShape`` keyword arguments): the optimizer,
    schedule, batch and clipping every arm shares, read from the ds_config, which the Trainer arms
    get as flags. A ValueError naming the key when the ds_config asks for what Trainer's linear
    schedule cannot match."""
    with open(ds_config, encoding="utf-8") as f:
        config = json.load(f)
    section = config.get("pretrain") or {}
    for key in ("model", "seq_len", "vocab_size"):
        if key not in section:
            raise ValueError(f"--ds_config {ds_config}: pretrain.{key} is required")
    optimizer = config.get("optimizer") or {}
    if str(optimizer.get("type", "")).lower() != "adamw":
        raise ValueError(f"--ds_config {ds_config}: optimizer.type must be AdamW (Trainer's optimizer)")
    params = optimizer.get("params") or {}
    scheduler = config.get("scheduler") or {}
    sched = scheduler.get("params") or {}
    if scheduler.get("type") != "WarmupDecayLR" or sched.get("warmup_type", "log") != "linear" \
            or float(sched.get("warmup_min_lr", 0)) != 0:
        raise ValueError(f"--ds_config {ds_config}: scheduler must be WarmupDecayLR with warmup_type linear and "
                         "warmup_min_lr 0 (Trainer's linear schedule)")
    if config.get("gradient_accumulation_steps", 1) != 1:
        raise ValueError(f"--ds_config {ds_config}: gradient_accumulation_steps must be 1")
    try:
        sift = dict(config.get("sift") or {}, **json.loads(sift_json))  # the ds_config's, with --sift's keys over it
        sift.pop("enabled", None)
        SiftConfig.from_dict(dict(sift, enabled=True))
    except (ValueError, TypeError) as err:
        raise ValueError(f"--sift: {err}") from None
    settings = dict(seq_len=int(section["seq_len"]), batch_size=int(config["train_micro_batch_size_per_gpu"]),
                    lr=float(params["lr"]), betas=tuple(params.get("betas", (0.9, 0.999))),
                    eps=float(params.get("eps", 1e-8)), weight_decay=float(params.get("weight_decay", 0.0)),
                    warmup_steps=int(sched.get("warmup_num_steps", 0)),
                    grad_clip=float(config.get("gradient_clipping", 0.0)),
                    mlm_probability=float(section.get("mlm_probability", 0.15)), sift=tuple(sorted(sift.items())))
    return section, settings


def read_results(out: str) -> Dict[str, List[dict]]:
    """Arm label -> the result.json of each of its finished seeds, by seed."""
    results: Dict[str, List[dict]] = {}
    for path in sorted(glob.glob(os.path.join(out, "runs", "*", "seed*", "result.json"))):
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
        results.setdefault(result["arm"], []).append(result)
    for rows in results.values():
        rows.sort(key=lambda r: r["seed"])
    return results


def as_curve(result: dict) -> Curve:
    """A finished run as a one-point curve: its final evaluation at its samples and training seconds."""
    one = lambda key: np.array([float(result[key])])  # noqa: E731
    return Curve(one("samples"), one("train_seconds"), one("val_loss"), one("val_acc"),
                 float(result.get("selection_share") or 0.0), {})


def ratio_interval(budgets: Sequence[frontier.Finals], top: frontier.Finals, bottom: Optional[frontier.Finals],
                   metric: str, axis: str, scale: str, n_boot: int, seed: int = 0) -> Tuple[float, Tuple[float, float]]:
    """(speed-up of ``top`` over the frontier, divided by that of ``bottom`` when given; percentile
    bootstrap interval): each resample redraws the seeds of every budget and of both arms."""
    def value(bs, t, b):
        front = frontier.frontier(bs)
        up = frontier.matched(front, t, metric, axis, scale)[0]
        return up / frontier.matched(front, b, metric, axis, scale)[0] if b is not None else up
    rng = np.random.default_rng(seed)
    draw = lambda f: f.take(rng.integers(0, len(f.samples), len(f.samples)))  # noqa: E731
    draws = [value([draw(b) for b in budgets], draw(top), draw(bottom) if bottom is not None else None)
             for _ in range(n_boot)]
    return value(list(budgets), top, bottom), (float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5)))


def _f(x: float, digits: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def _spread(values: Sequence[float], digits: int = 4) -> str:
    v = np.asarray(values, dtype=float)
    sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return f"{v.mean():.{digits}g} ± {sd:.2g}"


def model_config(study: dict):
    """The study's model config (a ``BertConfig``) with the study's vocabulary size."""
    path = study["model"] if os.path.isabs(study["model"]) else os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), study["model"])
    config = BertConfig.from_json_file(path)
    config.vocab_size = int(study["vocab_size"])
    return config


def write(out: str, arms: Sequence[Arm], n_boot: int = 2000) -> List[str]:
    """results.md and results.csv in ``out`` from its finished runs; returns their paths."""
    with open(os.path.join(out, STUDY_FILE), encoding="utf-8") as f:
        study = json.load(f)
    results = read_results(out)
    frontier_labels = [a.label for a in arms if a.frontier and results.get(a.label)]
    if len(frontier_labels) < 2:
        raise ValueError(f"{out}: fewer than two run_mlm.py budgets have finished runs: no frontier yet")
    finals = {label: frontier.finals([as_curve(r) for r in rows]) for label, rows in results.items()}
    budgets = sorted((finals[label] for label in frontier_labels), key=lambda f: f.samples.mean())
    others = [a.label for a in arms if not a.frontier and results.get(a.label)]
    config = model_config(study)
    sift = dict(study["shape"]["sift"])
    exit_layer, keep = int(sift.get("exit_layer", 1)), float(sift.get("keep_ratio", 0.5))
    seq_len, mlm = int(study["shape"]["seq_len"]), float(study["shape"].get("mlm_probability", 0.15))
    here = flops_model.step_model(config, seq_len, exit_layer, keep, mlm)
    base = flops_model.step_model(flops_model.BERT_BASE, seq_len, exit_layer, keep, mlm)
    lines = [f"# How much sooner than `run_mlm.py`? (BERT L{config.num_hidden_layers}-H{config.hidden_size}, "
             f"vocabulary {config.vocab_size})",
             "", f"Command: `{study['command']}`  ", f"Report written: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}  ",
             f"Seeds: {', '.join(str(s) for s in sorted({r['seed'] for rows in results.values() for r in rows}))}  ",
             f"The dense MLM head's share of a training step's FLOPs at this shape: {100 * here.head_share:.1f}% "
             f"(BERT-base at seq {seq_len}: {100 * base.head_share:.1f}%)", ""]
    lines += ["## Runs", "", "Final evaluation on the fixed held-out blocks; training seconds exclude start-up, "
              "evaluation and saving. Mean ± standard deviation over seeds.", ""]
    rows = []
    for label in frontier_labels + others:
        rs = results[label]
        secs = [r["train_seconds"] for r in rs]
        share = [r["selection_share"] for r in rs if r.get("selection_share") is not None]
        rows.append([label if label in frontier_labels else f"{label} ({ROLES.get(label, '')})",
                     str(len(rs)), str(rs[0]["steps"]), _spread(secs), f"{np.mean(secs) / rs[0]['steps']:.3f}",
                     _spread([r["val_loss"] for r in rs]), _spread([r["val_acc"] for r in rs], 3),
                     _f(float(np.mean(share))) if share else "—"])
    lines += _table(["arm", "seeds", "steps", "training s", "s / step", "val_loss", "val_acc", "selection share"], rows)
    csv_rows = []
    for scale in READINGS:
        lines += ["", f"## Budget-matched speed-up over `run_mlm.py` ({scale} reading of the frontier)", ""]
        rows = []
        for label in others:
            cells = [label]
            for metric in METRICS:
                for axis in ("time", "samples"):
                    m = frontier.budget_matched(budgets, finals[label], n_boot, 0, scale)[(metric, axis)]
                    cells.append(f"**{m.where}{m.speedup:.3g}** [{m.interval[0]:.3g}..{m.interval[1]:.3g}] "
                                 f"({min(m.seeds):.3g}..{max(m.seeds):.3g})")
                    csv_rows.append({"arm": label, "reading": scale, "metric": METRICS[metric][0], "axis": axis,
                                     "speedup": round(m.speedup, 4), "where": m.where,
                                     "ci_low": round(m.interval[0], 4), "ci_high": round(m.interval[1], 4),
                                     "seed_min": round(min(m.seeds), 4), "seed_max": round(max(m.seeds), 4)})
            rows.append(cells)
        lines += _table(["arm", "wall-clock, equal loss", "samples, equal loss", "wall-clock, equal accuracy",
                         "samples, equal accuracy"], rows)
    lines += ["", "Each cell: the speed-up [95% bootstrap interval over seeds] (each seed on the seed-mean frontier, "
              "min..max). `>`: the arm did better than the largest budget, so the speed-up is at least this; `<`: "
              "worse than the smallest, at most this.", "", "## Where the speed-up comes from (wall-clock)", ""]
    rows = []
    for name, top, bottom in DECOMPOSITION:
        if top not in finals or (bottom is not None and bottom not in finals):
            continue
        cells = [name, top if bottom is None else f"{top} / {bottom}"]
        for metric in METRICS:
            value, (lo, hi) = ratio_interval(budgets, finals[top], finals.get(bottom) if bottom else None, metric,
                                             "time", frontier.LINEAR, n_boot)
            cells.append(f"**{value:.3g}** [{lo:.3g}..{hi:.3g}]")
        rows.append(cells)
    lines += _table(["share", "ratio of speed-ups", "equal loss", "equal accuracy"], rows)
    lines += model_section({"this study's shape": here, f"BERT-base, seq {seq_len}": base}, results, budgets, finals)
    os.makedirs(out, exist_ok=True)
    md, table = os.path.join(out, "results.md"), os.path.join(out, "results.csv")
    with open(md, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with open(table, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(csv_rows[0]) if csv_rows else ["arm"])
        writer.writeheader()
        writer.writerows(csv_rows)
    return [md, table]


def model_section(models: Dict[str, "flops_model.StepModel"], results: Dict[str, List[dict]], budgets,
                  finals) -> List[str]:
    """The FLOPs model at this shape (beside what was measured) and for BERT-base: the head's
    speed-up, the selection's share and, with this study's measured saving in samples, SIFT's."""
    lines = ["", "## BERT-base on a GPU: a FLOPs model, not a measurement", ""]
    saving = math.nan
    if "trainer_sparse_sift" in finals:
        saving = frontier.matched(frontier.frontier(budgets), finals["trainer_sparse_sift"], "loss", "samples")[0]
    measured = [r["selection_share"] for r in results.get("trainer_sparse_sift", []) if r.get("selection_share")]
    here = next(iter(models.values()))
    scale = float(np.mean(measured)) / here.selection_share if measured else math.nan
    rows = []
    for name, m in models.items():
        for label, share in ((name, m.selection_share),
                             (f"{name}, selection share x {scale:.2f} (measured / model here)", m.selection_share * scale)):
            if math.isnan(share):
                continue
            sift_up = flops_model.sift_speedup(saving, share)
            rows.append([label, f"{100 * m.head_share:.1f}%", f"{m.head_speedup:.3g}", f"{100 * share:.1f}%",
                         _f(saving), _f(sift_up), _f(m.head_speedup * sift_up)])
    lines += _table(["shape", "dense head's FLOPs share", "head speed-up", "selection share",
                     "SIFT sample saving (measured here, equal loss)", "SIFT speed-up", "product"], rows)
    if measured:
        lines += ["", f"Measured selection share of the step time at this shape (SiftTrainer, CPU): "
                  f"{100 * float(np.mean(measured)):.1f}%, against the FLOPs model's {100 * here.selection_share:.1f}%; "
                  "the rows marked x scale the model's share by that ratio."]
    return lines
