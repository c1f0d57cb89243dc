"""Run metrics: a FLOPs / MFU estimate, and the logger behind ``metrics.jsonl``, TensorBoard and the
progress display (a tqdm bar on a terminal, plain lines otherwise)."""
from __future__ import annotations

import json
import logging
import math
import os
import sys
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional

from torch import nn
from tqdm.auto import tqdm

from ..adapters import detect_adapter
from ..config import SiftConfig
from ..criteria.reducible import is_online
from .reference_model import reference_model
from .tracking import write_record

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class FlopsModel:
    """Model FLOPs per token, nanoGPT's ``estimate_mfu`` accounting (6N per token for forward +
    backward, plus the attention score / value matmuls), extended with the SIFT selection pass.

    train_per_token  -- backprop pass: ``6 N + 12 L H T`` (N: parameters without the position
                        embeddings; the tied word embedding counts once, for the decoder matmul
                        that the MLM head runs at every position -- or, with ``sparse_head``, at
                        the masked fraction of positions only).
    select_per_token -- selection forward per scored (gross) token: ``2 N_prefix + 4 k H T`` for the
                        embeddings and first k layers, plus the head (transform + decoder) on the
                        masked fraction of positions only, as the scorer runs it.
    """

    train_per_token: float
    select_per_token: float

    @classmethod
    def for_masked_lm(cls, model, seq_len: int, exit_layer: int, masked_fraction: float = 0.15,
                      sparse_head: bool = False) -> "FlopsModel":
        """Any built-in family: the layers and the head (its modules and the vocab projection) are
        the ones its early-exit adapter names; learned position tables are the ``position_embeddings``
        embeddings (none in rotary / relative-position models)."""
        return cls._count(model, seq_len, exit_layer, masked_fraction if sparse_head else 1.0, masked_fraction)

    @classmethod
    def for_causal_lm(cls, model, seq_len: int, exit_layer: int, max_positions: int = 0) -> "FlopsModel":
        """A causal LM (every position a target): ``6 N + 12 L H T`` per trained token, N without the
        position tables and, when the LM head is untied, without the input embedding table (a lookup,
        no matmul); the selection pass runs the exit head on the scored positions only
        (``max_positions`` of ``seq_len`` per row, 0: all)."""
        scored = min(1.0, max_positions / seq_len) if max_positions else 1.0
        return cls._count(model, seq_len, exit_layer, 1.0, scored, lookup_tables=True)

    @classmethod
    def _count(cls, model, seq_len: int, exit_layer: int, train_head_fraction: float, select_head_fraction: float,
               lookup_tables: bool = False) -> "FlopsModel":
        adapter = detect_adapter(model)
        hidden, layers = model.config.hidden_size, adapter.num_layers
        tables = [m for name, m in model.named_modules()
                  if name.rsplit(".", 1)[-1] == "position_embeddings" and isinstance(m, nn.Embedding)]
        if lookup_tables:  # the token embedding too, unless it is the (tied) output projection
            head_weights = {id(p) for p in adapter.vocab_projection() if p is not None}
            tables += [m for m in getattr(adapter, "embedding_modules", []) if id(getattr(m, "weight", None)) not in
                       head_weights and isinstance(m, nn.Embedding)]
        n_total = _numel(model) - _numel(*tables)
        n_layer = _numel(adapter.layers) / layers
        n_head = _numel(*adapter.head_modules, extra=[p for p in adapter.vocab_projection() if p is not None])
        train = 6 * (n_total - n_head) + 6 * train_head_fraction * n_head + 12 * layers * hidden * seq_len
        select = 2 * exit_layer * n_layer + 4 * exit_layer * hidden * seq_len + select_head_fraction * 2 * n_head
        return cls(float(train), float(select))

    def step_flops(self, train_tokens: int, gross_tokens: int, selecting: bool) -> float:
        return self.train_per_token * train_tokens + (self.select_per_token * gross_tokens if selecting else 0.0)


def charge_criterion(flops: FlopsModel, sift: SiftConfig, seq_len: int, masked_fraction: float) -> FlopsModel:
    """``flops`` with the selection pass of the criterion: none for a stored score; for the reducible
    loss with an online reference, the reference model's own forward (every layer, the head on the
    masked positions) on every gross token as well."""
    if sift.criterion_class.statistic is None:  # no model pass (a stored score)
        return replace(flops, select_per_token=0.0)
    if sift.criterion == "reducible" and is_online(sift.options):
        reference, adapter = reference_model(sift.options.reference, "cpu")
        extra = FlopsModel.for_masked_lm(reference, seq_len, adapter.num_layers, masked_fraction, sparse_head=True)
        return replace(flops, select_per_token=flops.select_per_token + extra.select_per_token)
    return flops


def _numel(*modules, extra=()) -> int:
    """Parameter count of the modules and ``extra`` parameters, each shared parameter once (ZeRO-3
    partitioned parameters report their full size as ``ds_numel``)."""
    seen, total = set(), 0
    for p in [*(p for m in modules for p in m.parameters()), *extra]:
        if id(p) not in seen:
            seen.add(id(p))
            total += getattr(p, "ds_numel", p.numel())
    return total


def mfu(flops: float, seconds: float, peak_tflops: float, devices: int, device_type: str = "cuda") -> Optional[float]:
    """Model FLOPs utilisation: achieved FLOP/s over ``devices x peak_tflops``. ``peak_tflops`` is a
    GPU's peak (``--peak_tflops``); on another device (the CPU) there is no peak to divide by: None."""
    if device_type != "cuda":
        return None
    if seconds <= 0:
        return 0.0
    return flops / seconds / (peak_tflops * 1e12 * devices)


# ---------------------------------------------------------------------------------------- logger
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


SHOWN = (("train_loss", "loss"), ("val_loss", "val_loss"), ("val_acc", "val_acc"), ("val_nsp_acc", "val_nsp_acc"),
         ("tokens_per_s", "tok/s"), ("mfu", "mfu"), ("lr", "lr"), ("sift/selection_share", "sel_share"),
         ("probe/spearman", "probe_rho"))


class MetricsLogger:
    """Rank 0 writes one JSON line per logging step to ``metrics.jsonl``, the numeric fields to
    DeepSpeed's monitor (TensorBoard, CSV, wandb and Comet as the ds_config enables them; ``tracking``),
    and a progress display: a tqdm bar when stdout is a terminal, else one plain line per record.
    Other ranks no-op.
    """

    def __init__(self, output_dir: str, total_steps: int, start_step: int = 0, monitor=None,
                 enabled: bool = True, progress: Optional[bool] = None, run_id: Optional[str] = None):
        self.enabled = enabled
        self.run_id = run_id  # in every record: which run wrote it
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.monitor = monitor if monitor is not None and getattr(monitor, "enabled", False) else None
        self.bar = None
        self._postfix: Dict[str, Any] = {}
        if not enabled:
            return
        purge_after(self.path, start_step)
        if progress is None:
            progress = sys.stdout.isatty()
        if progress:
            self.bar = tqdm(total=total_steps, initial=start_step, desc="pretrain", unit="step", dynamic_ncols=True,
                            file=sys.stdout)

    def step(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def log(self, record: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.run_id is not None:
            record = {**record, "run_id": self.run_id}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
        if self.monitor is not None:
            write_record(self.monitor, record)
        shown = {label: record[k] for k, label in SHOWN if record.get(k) is not None}
        line = f"step {record['step']}/{record['max_steps']} | " + " | ".join(f"{k} {_fmt(v)}" for k, v in shown.items())
        if self.bar is None:
            self.info(line)
            return
        self._postfix.update(shown)  # the bar keeps the last validation figures between evaluations
        self.bar.set_postfix({label: _fmt(self._postfix[label]) for _, label in SHOWN if label in self._postfix},
                             refresh=False)
        self.step(record["step"])
        if record.get("val_acc") is not None:
            self.bar.write(line)  # evaluations stay on screen above the bar

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        try:
            if self.bar is not None:
                self.bar.write(message)
            else:
                print(message, flush=True)
        except BrokenPipeError:  # the console's reader is gone (pdsh and ssh of a stopped multi-node run):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # carry on to the checkpoint

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def read_metrics(path: str) -> List[dict]:
    """The records of a ``metrics.jsonl`` (a torn last line, from a killed run, is ignored)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def last_step_record(run_dir: str, step: Optional[int] = None) -> dict:
    """The last step record of the run at ``run_dir`` at or before ``step`` (step, samples,
    elapsed_s, ...): what training that run had cost by then. ValueError naming the file without one."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file (the cost of training that model is unknown)")
    rows = [r for r in read_metrics(path) if "step" in r and (step is None or r["step"] <= step)]
    if not rows:
        raise ValueError(f"{path}: no step record" + ("" if step is None else f" up to step {step}"))
    return rows[-1]


def purge_after(path: str, step: int) -> None:
    """Drop the records of steps after ``step`` (a resumed run rewrites them; TensorBoard's
    ``purge_step`` does the same for event files), and any torn record (a crash in the middle of a
    write), with a warning naming the file and line."""
    if not os.path.isfile(path):
        return
    kept = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                logger.warning("%s: dropped the torn or unreadable record on line %d (%r...)", path, number,
                               line.strip()[:60])
                continue
            if record.get("step", 0) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(kept)
