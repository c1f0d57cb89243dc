"""Assembly of one pretraining job from its ``RunPlan``: process group, tokenizer, data, model,
``sift_ds.initialize``, loader, trainer, resume; then the run and the export of the final model."""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch.distributed as dist
from transformers import set_seed

from .. import initialize
from ..compiling import compile_engine
from ..score_file import attach_scores
from ..zero import full_parameters
from . import checkpoint, nsp_distillation, tracking
from .fused import fuse_layer_norms
from .job_data import check_vocab, prepare_data
from .identity import RunIdentity, new_run_id, write_identity
from .lock import lock_output_dir
from .output_dir import clear
from .loader import GrossBatchLoader, fixed_eval_batches, make_collator
from .metrics import FlopsModel, MetricsLogger, charge_criterion
from .models import build_model, set_special_tokens
from .optimizer import apex_adam, weight_decay_groups
from .plan import RunPlan
from .manifest import atomic_write
from .reference_check import RUN_RECORD, check_reference_model, same_blocks_warnings
from .resume import MODEL_KEYS
from .run_record import corpus_record, training_record
from .save_failure import export_failure
from .runtime import configure_logging, init_distributed, warn_stale_build_locks
from .trainer import LoopOptions, Trainer
from .unigram import write_unigram_counts

logger = logging.getLogger("sift_ds.pretrain")


@dataclass
class Job:
    plan: RunPlan
    engine: Any
    trainer: Trainer
    tokenizer: Any

    def run(self) -> Dict[str, float]:
        result = self.trainer.train()
        if self.trainer.step >= self.plan.max_steps:
            final = os.path.join(self.plan.output_dir, "final")
            try:
                export_model(self.engine, self.tokenizer, final)
                if self.engine.global_rank == 0:  # what trained it, for a run that uses it as its reference model
                    atomic_write(os.path.join(final, RUN_RECORD),
                                 json.dumps(self.trainer.run_info, indent=1, default=str))
            except (OSError, RuntimeError) as err:
                raise export_failure(err, final, checkpoint.checkpoint_dir(self.plan.output_dir)) from err
        if self.engine.global_rank == 0:
            summary = {"step": self.trainer.step, **result, "elapsed_s": round(self.trainer.elapsed_s, 1)}
            logger.info("finished: %s", json.dumps(summary))
        return result


def setup_job(plan: RunPlan) -> Job:
    """Output-dir lock, process group, run identity, tokenizer, data, model, DeepSpeed engine, loader,
    trainer (and resume)."""
    opts = plan.options
    configure_logging(int(os.environ.get("RANK", "0")))
    if int(os.environ.get("RANK", "0")) == 0:
        lock_output_dir(plan.output_dir)  # one live job per output directory (rank 0 holds it)
        clear(plan.delete_at_start)  # --overwrite_output_dir: the previous run's files, before anything is written
        warn_stale_build_locks(logger)  # before DeepSpeed's first JIT op build, which would wait on one
    init_distributed(opts.dist_timeout_minutes)
    rank = dist.get_rank()
    for note in plan.notes:
        logger.info(note)
    if rank == 0:
        for warning in plan.warnings:
            logger.warning(warning)
    if plan.resume is not None:  # the sha256 manifest, before anything is unpickled (or data prepared)
        point = plan.resume
        tag = checkpoint.first_intact(point.load_dir, (point.tag,) + point.fallbacks, opts.trust_checkpoint)
        plan = dataclasses.replace(plan, resume=dataclasses.replace(point, tag=tag))
    identity = start_identity(plan)
    set_seed(opts.seed)
    tokenizer, data = prepare_data(plan)
    check_vocab(plan, len(tokenizer))
    write_unigram_counts(plan, data, len(tokenizer))
    tracking.local_directories(plan.ds_config, plan.output_dir)  # before DeepSpeed starts wandb / Comet
    check_reference_model(plan.sift, opts.seq_len, tokenizer)  # criterion reducible's online reference, before step 1
    engine, flops = build_engine(plan, tokenizer)
    data = dataclasses.replace(data, train=attach_scores(data.train, plan.sift, tokenizer))  # criteria stored, reducible

    collator = make_collator(opts, tokenizer, engine.module)
    loader = GrossBatchLoader(data.train, collator, engine.gross_batch_size, engine.rank, engine.world_size, opts.seed)
    eval_batches = fixed_eval_batches(data.val, collator, opts.eval_batch_size or plan.batch.micro, engine.rank,
                                      engine.world_size, opts.data_seed)
    state = checkpoint.load(engine, plan.resume.load_dir, plan.resume.tag) if plan.resume is not None else None
    metrics = MetricsLogger(plan.output_dir, plan.max_steps, engine.global_steps, engine.monitor, enabled=rank == 0,
                            run_id=identity.run_id)
    run_info = {"run_id": identity.run_id, "seq_len": opts.seq_len, "objective": opts.objective,
                "world_size": plan.world_size, "seed": opts.seed, "data_seed": opts.data_seed,
                "model": opts.model, "vocab_size": len(tokenizer),
                "model_config": {k: getattr(plan.model_config, k, None) for k in MODEL_KEYS}}
    if rank == 0:  # what a resume checks (run_record.py); rank 0 writes the manifests
        known = plan.resume.run.get("corpus") if plan.resume is not None else None
        run_info.update(corpus=corpus_record(opts, plan.data_files, known), training=training_record(opts, plan.sift))
        for warning in same_blocks_warnings(plan.sift, run_info):
            logger.warning(warning)
    distil = nsp_distillation.check_options(opts, plan.ds_config)  # NSP distilled once converged (mlm+nsp)
    trainer = Trainer(engine, loader, eval_batches, metrics, flops, loop_options(plan), run_info) if distil is None \
        else nsp_distillation.AsyncConvergenceLoop(engine, loader, eval_batches, metrics, flops, loop_options(plan),
                                                     run_info, convergence=nsp_distillation.attach(engine, distil))
    if state is not None:
        trainer.restore(state)
    if rank == 0:
        if state is None or not os.path.isdir(os.path.join(plan.output_dir, "tokenizer")):
            tokenizer.save_pretrained(os.path.join(plan.output_dir, "tokenizer"))
        write_run_config(plan)
    return Job(plan, engine, trainer, tokenizer)


def start_identity(plan: RunPlan) -> RunIdentity:
    """The run this job belongs to: the one it continues, or a new one whose id rank 0 draws and
    writes to ``run.json`` (a collective)."""
    identity = plan.identity
    if identity.new:
        payload = [new_run_id() if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(payload, src=0)
        identity = dataclasses.replace(identity, run_id=payload[0])
        if dist.get_rank() == 0:
            write_identity(plan.output_dir, identity)
            logger.info("run %s%s", identity.run_id,
                        f" (a fork of {identity.parent['checkpoint']})" if identity.parent else "")
    elif dist.get_rank() == 0:
        logger.info("run %s (continued)", identity.run_id)
    return identity


def build_engine(plan: RunPlan, tokenizer):
    """(SiftEngine, FlopsModel): the model of the plan's config with the tokenizer's vocabulary size and
    special-token ids (apex FusedLayerNorm when available), AdamW weight-decay groups (apex FusedAdam
    when available), ``sift_ds.initialize`` with the plan's SiftConfig."""
    opts = plan.options
    config = copy.deepcopy(plan.model_config)
    config.vocab_size = len(tokenizer)
    set_special_tokens(config, tokenizer)
    model = build_model(config, opts.objective, sparse_head=opts.sparse_mlm_head,
                        masked_share=opts.mlm_probability if opts.compile else None)
    count, norm = fuse_layer_norms(model)
    groups = weight_decay_groups(model)
    client_optimizer, ds_config = apex_adam(groups, plan.ds_config)
    if opts.objective == "clm":
        flops = FlopsModel.for_causal_lm(model, opts.seq_len, plan.sift.exit_layer, plan.sift.max_positions)
    else:
        flops = FlopsModel.for_masked_lm(model, opts.seq_len, plan.sift.exit_layer, opts.mlm_probability,
                                         sparse_head=opts.sparse_mlm_head)
    flops = charge_criterion(flops, plan.sift, opts.seq_len, opts.mlm_probability)
    engine, _, _, _ = initialize(model=model, model_parameters=groups, config=ds_config, sift_config=plan.sift,
                                 optimizer=client_optimizer)
    if opts.compile:  # DeepSpeed's engine.compile for the training forward, and the selection's prefix forward
        compile_engine(engine, opts.compile_backend)
    basic = getattr(engine.engine, "basic_optimizer", None) or client_optimizer
    logger.info("model: %s, %.1fM parameters; layer norm: %s%s; optimizer: %s.%s%s", opts.model,
                sum(p.numel() for p in model.parameters()) / 1e6, norm, f" (x{count})" if count else "",
                type(basic).__module__, type(basic).__name__,
                "" if client_optimizer else " (apex.optimizers not available)")
    logger.info("batch: micro %d, gross %d per rank, grad-accum %d, world %d, global %d; sift: %s",
                plan.batch.micro, engine.gross_batch_size, plan.batch.grad_accum, plan.world_size, plan.batch.total,
                json.dumps(plan.sift.to_dict()))
    return engine, flops


def auto_interval(value: Optional[int], max_steps: int, fraction: float, cap: int) -> int:
    """An explicit interval, or ``fraction`` of the run capped at ``cap`` steps (at least 1)."""
    if value is not None:
        return value
    return max(1, min(cap, int(max_steps * fraction)))


def loop_options(plan: RunPlan) -> LoopOptions:
    opts = plan.options
    return LoopOptions(
        max_steps=plan.max_steps,
        log_interval=auto_interval(opts.log_interval, plan.max_steps, 0.02, 100),
        eval_interval=auto_interval(opts.eval_interval, plan.max_steps, 0.1, 1000),
        save_interval=opts.save_interval,
        exit_interval=opts.exit_interval,
        time_budget_s=(opts.time_budget or 0.0) * 60.0,
        save_dir=checkpoint.checkpoint_dir(plan.output_dir),
        keep_checkpoints=opts.keep_checkpoints,
        probe_interval=opts.probe_interval,
        peak_tflops=opts.peak_tflops,
        seq_len=opts.seq_len,
    )


def write_run_config(plan: RunPlan) -> None:
    """``run_config.json``: the resolved options, SiftConfig and the ds_config as resolved."""
    record = {"options": plan.options.as_record(), "sift": plan.sift.to_dict(), "ds_config": plan.ds_config,
              "world_size": plan.world_size, "max_steps": plan.max_steps}
    with open(os.path.join(plan.output_dir, "run_config.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, default=str)


def export_model(engine, tokenizer, out_dir: str) -> None:
    """The trained model in Hugging Face format (``from_pretrained``-loadable, config.json naming the
    HF class) with its tokenizer; under ZeRO-3 the partitioned parameters are gathered first."""
    module = engine.module
    with full_parameters([module]):
        if dist.get_rank() == 0:
            module.save_pretrained(out_dir, safe_serialization=True)
            tokenizer.save_pretrained(out_dir)
    if dist.is_initialized():
        dist.barrier()
