"""The arms of the end-to-end study against ``run_mlm.py`` and the command line of each run.

Every arm trains the same model config, tokenizer, training documents, batch, sequence length,
optimizer settings and learning-rate schedule (linear warm-up, then linear decay to zero at the
run's own last step); they differ in front-end, MLM head and selection:

* ``run_mlm-<steps>``: ``launch/run_mlm_sift.py`` with SIFT off and HF's dense MLM head: what a
  user of ``run_mlm.py`` runs today. At several budgets: the frontier every arm is read against.
* ``job``, ``job_sift``: the DeepSpeed pretraining job (masked-positions-only head), without and
  with SIFT.
* ``trainer_sparse``, ``trainer_sparse_sift``: ``run_mlm_sift.py`` (``SiftTrainer``) with the
  masked-positions-only head, without and with SIFT.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ..pretrain.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_MLM = os.path.join(REPO, "launch", "run_mlm_sift.py")
JOB = os.path.join(REPO, "launch", "pretrain_bert.py")
FRONTIER_PREFIX = "run_mlm-"


@dataclass(frozen=True)
class StudyShape:
    """What every run shares (the study's settings)."""

    model_config: str          # a BERT config.json
    ds_config: str             # the pretraining job's ds_config: its optimizer and schedule are the study's
    tokenizer: str             # directory
    train_file: str            # JSON lines of the training documents (run_mlm.py's --train_file)
    prepared: str              # the same documents prepared for the pretraining job (launch/prepare_data.py)
    seq_len: int = 128
    batch_size: int = 16
    lr: float = 1e-3
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-6
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    mlm_probability: float = 0.15
    sift: tuple = ()           # (key, value) pairs of the SIFT arms' settings


@dataclass(frozen=True)
class Arm:
    label: str
    front_end: str       # "run_mlm" (run_mlm_sift.py under Trainer) or "job" (the DeepSpeed pretraining job)
    steps: int
    sparse_head: bool
    sift: bool

    @property
    def frontier(self) -> bool:
        return self.label.startswith(FRONTIER_PREFIX)


def study_arms(budgets: Sequence[int], steps: int) -> List[Arm]:
    """The frontier of ``run_mlm.py`` at ``budgets`` and the four arms at ``steps``."""
    if len(set(budgets)) < 2:
        raise ValueError(f"--budgets: the frontier needs two or more distinct budgets, got {list(budgets)}")
    if min(list(budgets) + [steps]) < 1:
        raise ValueError("--budgets and --steps must be positive")
    arms = [Arm(f"{FRONTIER_PREFIX}{b}", "run_mlm", b, sparse_head=False, sift=False) for b in sorted(budgets)]
    return arms + [Arm("job", "job", steps, True, False), Arm("job_sift", "job", steps, True, True),
                   Arm("trainer_sparse", "run_mlm", steps, True, False),
                   Arm("trainer_sparse_sift", "run_mlm", steps, True, True)]


def study_plan(arms: Sequence[Arm], seeds: int) -> List[Tuple[Arm, int]]:
    """Every (arm, seed), seed-major. Seed s takes its arms with a stride of the s-th whole number
    prime to their count (1, 2, 3, ... for 7 arms), so that runs next to each other in the queue, which
    share the machine, are different pairs of arms in different seeds and a neighbour's effect on
    speed averages out over seeds."""
    n = len(arms)
    strides = [k for k in range(1, n) if math.gcd(k, n) == 1] or [1]  # distinct orders, then they repeat
    return [(arms[(i * strides[seed % len(strides)]) % n], seed) for seed in range(seeds) for i in range(n)]


def sift_section(shape: StudyShape, on: bool) -> Dict[str, object]:
    return dict(shape.sift, enabled=True) if on else {"enabled": False}


def run_mlm_command(python: str, arm: Arm, shape: StudyShape, seed: int, out: str) -> List[str]:
    """``run_mlm_sift.py`` as a ``run_mlm.py`` user runs it, on the CPU, without DeepSpeed; no
    evaluation and no checkpoint during training (the study evaluates the final model)."""
    return [python, RUN_MLM, "--config_name", shape.model_config, "--tokenizer_name", shape.tokenizer,
            "--train_file", shape.train_file, "--max_seq_length", str(shape.seq_len), "--do_train",
            "--output_dir", out, "--overwrite_output_dir", "--per_device_train_batch_size", str(shape.batch_size),
            "--max_steps", str(arm.steps), "--learning_rate", str(shape.lr), "--adam_beta1", str(shape.betas[0]),
            "--adam_beta2", str(shape.betas[1]), "--adam_epsilon", str(shape.eps),
            "--weight_decay", str(shape.weight_decay), "--warmup_steps", str(shape.warmup_steps),
            "--lr_scheduler_type", "linear", "--max_grad_norm", str(shape.grad_clip),
            "--mlm_probability", str(shape.mlm_probability), "--seed", str(seed), "--logging_steps", "50",
            "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none",
            "--dataloader_num_workers", "0", "--disable_tqdm", "true",
            "--sparse_mlm_head", str(arm.sparse_head).lower(),
            "--sift_config", json.dumps(sift_section(shape, arm.sift))]


def job_command(deepspeed: str, port: int, arm: Arm, shape: StudyShape, seed: int, out: str) -> List[str]:
    """The DeepSpeed pretraining job on one rank: evaluation and checkpoint at the end only."""
    words = [deepspeed, "--num_gpus", "1", "--master_port", str(port), JOB, "--ds_config", shape.ds_config,
             "--model", shape.model_config, "--prepared", shape.prepared, "--tokenizer", shape.tokenizer,
             "--seq_len", str(shape.seq_len), "--output_dir", out, "--overwrite_output_dir", "true",
             "--seed", str(seed), "--max_steps", str(arm.steps), "--lr_warmup_steps", str(shape.warmup_steps),
             "--mlm_probability", str(shape.mlm_probability), "--eval_interval", "0", "--save_interval", "0",
             "--max_val_samples", "64", "--log_interval", "50", "--sift_enabled", str(arm.sift).lower()]
    if arm.sift:
        for key, value in shape.sift:
            words += [f"--sift_{key}", str(value)]
    return words


def final_model(arm: Arm, out: str) -> str:
    """Where a finished run's model is: the Trainer's output_dir, the job's final/."""
    return os.path.join(out, "final") if arm.front_end == "job" else out


def train_seconds(arm, run_dir: str) -> Tuple[float, Optional[float]]:
    """(training seconds without evaluation or checkpoints, mean selection share after warm-up) of a
    finished run: the job's elapsed_s at its last step, the Trainer's train_runtime."""
    if arm.front_end == "job":
        records = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
        last = [r for r in records if r.get("step") == arm.steps]
        if not last:
            raise ValueError(f"{run_dir}: metrics.jsonl has no record of step {arm.steps}")
        shares = [r["sift/selection_share"] for r in records
                  if r.get("sift/selection_share") is not None and not r.get("sift/warmup")]
        return float(last[-1]["elapsed_s"]), (sum(shares) / len(shares) if shares else None)
    with open(os.path.join(run_dir, "train_results.json"), encoding="utf-8") as f:
        runtime = float(json.load(f)["train_runtime"])
    with open(os.path.join(run_dir, "trainer_state.json"), encoding="utf-8") as f:
        history = json.load(f)["log_history"]
    if not any(h.get("step") == arm.steps for h in history):
        raise ValueError(f"{run_dir}: trainer_state.json does not reach step {arm.steps}")
    shares = [h["sift/selection_share"] for h in history
              if h.get("sift/selection_share") is not None and not h.get("sift/warmup")]
    return runtime, (sum(shares) / len(shares) if shares else None)
