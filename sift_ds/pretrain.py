"""BERT pretraining with SIFT on DeepSpeed: start-up validation (``resolve_plan``), job assembly
(``setup_job``) and the run (``Job.run``). ``launch/pretrain_bert.py`` is the command line around it.

Everything that can be checked before paying for distributed start-up is checked in
``resolve_plan`` and reported as a ValueError naming the option or config key at fault.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from . import checkpoint
from .config import SiftConfig, load_ds_config

logger = logging.getLogger("sift_ds.pretrain")

PRETRAIN_SECTION = "pretrain"  # ds_config section with defaults for the command-line options
SIFT_OVERRIDES = ("enabled", "criterion", "exit_layer", "keep_ratio", "warmup_steps", "scope", "kernel")
PAPER_ADAMW = {"type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-6, "weight_decay": 0.01}}
PAPER_WARMUP_FRACTION = 0.002  # the paper warms up over 0.2 % of the steps
SCHEDULERS_WITH_TOTAL = ("WarmupDecayLR", "WarmupCosineLR")
MONITORS = ("tensorboard", "csv_monitor", "wandb", "comet")


# ---------------------------------------------------------------------------------------- plan
@dataclass
class RunPlan:
    """Resolved, validated settings of one run (no process group, model or data yet)."""

    args: argparse.Namespace
    ds_config: dict  # for sift_ds.initialize: batch sizes, scheduler and monitor paths filled in
    sift: SiftConfig
    world_size: int
    micro_batch: int
    grad_accum: int
    train_batch: int
    gross_batch: int
    max_steps: int
    model_config: Any  # transformers.BertConfig of --model (its vocab_size comes from the tokenizer later)
    data_files: Optional[List[str]]
    resume: Optional[Tuple[str, Optional[str]]]
    notes: List[str] = field(default_factory=list)  # start-up decisions, logged by rank 0

    @property
    def output_dir(self) -> str:
        return self.args.output_dir


def read_pretrain_section(ds_config_path: str) -> dict:
    """The ds_config's ``"pretrain"`` section (defaults for command-line options), or {}."""
    section = load_ds_config(ds_config_path).get(PRETRAIN_SECTION) or {}
    if not isinstance(section, dict):
        raise ValueError(f"ds_config key '{PRETRAIN_SECTION}' must be a JSON object")
    return section


def section_to_argv(section: dict, parser: argparse.ArgumentParser, cli_args: argparse.Namespace) -> List[str]:
    """Command-line words for the ``"pretrain"`` section's keys that the command line left at their
    default, so that the parser validates them and explicit options win."""
    options = {a.dest: a for a in parser._actions if a.option_strings}
    argv: List[str] = []
    for key, value in section.items():
        action = options.get(key)
        if action is None or key in ("ds_config", "deepspeed_flag", "local_rank", "help"):
            known = sorted(k for k in options if k not in ("ds_config", "deepspeed_flag", "local_rank", "help"))
            raise ValueError(f"ds_config '{PRETRAIN_SECTION}' section: unknown key {key!r}; known keys: {known}")
        if value is None or getattr(cli_args, key) != parser.get_default(key):
            continue  # null in the section, or given on the command line
        for v in value if isinstance(value, list) else [value]:
            argv += [action.option_strings[0], json.dumps(v) if isinstance(v, bool) else str(v)]
    return argv


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", "1")))


def resolve_plan(args: argparse.Namespace, world_size: Optional[int] = None,
                 accelerator: Optional[str] = None) -> RunPlan:
    """Validate the options and the ds_config against each other; ValueError names what is wrong."""
    from deepspeed.accelerator import get_accelerator

    world_size = world_size or world_size_from_env()
    accelerator = accelerator or get_accelerator().device_name()
    notes: List[str] = []
    if not args.ds_config:
        raise ValueError("--ds_config is required (a DeepSpeed JSON config with a 'sift' section; see ds_configs/)")
    ds_config = load_ds_config(args.ds_config)
    ds_config.pop(PRETRAIN_SECTION, None)

    sift = _resolve_sift(ds_config, args)
    micro, gas, total = _resolve_batch(ds_config, world_size)
    gross = sift.gross_batch_size(micro)
    _check_precision(ds_config, accelerator)
    _check_positive(args)
    max_steps = _resolve_schedule(ds_config, args, notes)
    _resolve_monitors(ds_config, args.output_dir, "sift" if sift.enabled else "vanilla")
    model_config = _resolve_model(args, sift)
    data_files = _resolve_data(args)
    _check_tokenizer(args)
    _make_output_dir(args.output_dir)
    resume = checkpoint.find_resume(args.resume, args.output_dir)
    if args.resume == "auto" and resume is None:
        notes.append(f"--resume auto: no checkpoint in {checkpoint.checkpoint_dir(args.output_dir)}, starting fresh")
    elif resume is None and checkpoint.list_tags(checkpoint.checkpoint_dir(args.output_dir)):
        notes.append(f"{args.output_dir} already holds checkpoints: starting fresh and overwriting them "
                     "(--resume auto continues instead)")
    return RunPlan(args, ds_config, sift, world_size, micro, gas, total, gross, max_steps, model_config,
                   data_files, resume, notes)


def _resolve_sift(ds_config: dict, args) -> SiftConfig:
    section = ds_config.get("sift")
    if section is not None and not isinstance(section, dict):
        raise ValueError("ds_config key 'sift' must be a JSON object")
    section = dict(section or {})
    overridden = {}
    for key in SIFT_OVERRIDES:
        value = getattr(args, f"sift_{key}", None)
        if value is not None:
            section[key], overridden[key] = value, f"--sift_{key}"
    try:
        sift = SiftConfig.from_dict(section)
    except ValueError as err:
        flags = [flag for key, flag in overridden.items() if f"sift.{key}" in str(err)]
        raise ValueError(f"{err} (set by {flags[0]})" if flags else str(err)) from None
    ds_config["sift"] = section
    return sift


def _resolve_batch(ds_config: dict, world: int) -> Tuple[int, int, int]:
    """DeepSpeed's batch rule, checked up front: train_batch_size = micro x grad-accum x world."""
    keys = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
    values = {}
    for key in keys:
        value = ds_config.get(key)
        if value is None or value == "auto":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"ds_config {key} must be a positive integer, got {value!r}")
        values[key] = value
    total, micro, gas = (values.get(k) for k in keys)
    if total is None and micro is None:
        raise ValueError("ds_config needs train_micro_batch_size_per_gpu or train_batch_size")
    if micro is None:
        gas = gas or 1
        if total % (gas * world):
            raise ValueError(f"ds_config train_batch_size={total} is not divisible by gradient_accumulation_steps={gas}"
                             f" x world size {world}")
        micro = total // (gas * world)
    elif gas is None:
        gas = 1 if total is None else total // (micro * world)
        if total is not None and (gas < 1 or micro * gas * world != total):
            raise ValueError(f"ds_config train_batch_size={total} is not a multiple of train_micro_batch_size_per_gpu"
                             f"={micro} x world size {world}")
    total = total if total is not None else micro * gas * world
    if micro * gas * world != total:
        raise ValueError(
            f"batch sizes do not add up: train_micro_batch_size_per_gpu={micro} x gradient_accumulation_steps={gas}"
            f" x world size {world} = {micro * gas * world}, but train_batch_size={total}"
        )
    ds_config.update(train_batch_size=total, train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=gas)
    return micro, gas, total


def _enabled(ds_config: dict, key: str) -> bool:
    section = ds_config.get(key)
    return isinstance(section, dict) and bool(section.get("enabled", False))


def _check_precision(ds_config: dict, accelerator: str) -> None:
    fp16, bf16 = _enabled(ds_config, "fp16"), _enabled(ds_config, "bf16") or _enabled(ds_config, "bfloat16")
    if fp16 and bf16:
        raise ValueError("ds_config enables both fp16 and bf16; choose one")
    if fp16 and accelerator == "cpu":
        raise ValueError("ds_config fp16.enabled: DeepSpeed does not support fp16 on the CPU accelerator; "
                         "use bf16 or fp32 (e.g. ds_configs/tiny_cpu_sift.json)")


def _check_positive(args) -> None:
    for name in ("max_steps", "log_interval", "eval_interval", "save_interval", "exit_interval", "seq_len",
                 "vocab_size", "eval_batch_size", "keep_checkpoints", "time_budget", "peak_tflops"):
        value = getattr(args, name, None)
        allow_zero = name in ("eval_interval", "save_interval", "exit_interval", "keep_checkpoints")
        if value is not None and (value < 0 or (value == 0 and not allow_zero)):
            raise ValueError(f"--{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    if not 0.0 < args.val_fraction < 1.0:
        raise ValueError(f"--val_fraction must be in (0, 1), got {args.val_fraction}")
    if not 0.0 < args.mlm_probability < 1.0:
        raise ValueError(f"--mlm_probability must be in (0, 1), got {args.mlm_probability}")


def _resolve_schedule(ds_config: dict, args, notes: List[str]) -> int:
    """max_steps, and the optimizer / scheduler sections: the paper's AdamW when there is none, and
    "auto" (or absent) scheduler values filled in from --max_steps and the optimizer's lr."""
    if "optimizer" not in ds_config:
        ds_config["optimizer"] = json.loads(json.dumps(PAPER_ADAMW))
        ds_config.setdefault("scheduler", {"type": "WarmupDecayLR", "params": {}})
        notes.append("ds_config has no optimizer: using the paper's AdamW (lr 1e-4, wd 0.01, betas 0.9/0.999) "
                     "with WarmupDecayLR (warm-up over 0.2% of the steps, then linear decay)")
    optimizer = ds_config["optimizer"]
    scheduler = ds_config.get("scheduler")
    params = scheduler.setdefault("params", {}) if isinstance(scheduler, dict) else {}
    total = params.get("total_num_steps")
    config_total = total if isinstance(total, int) and not isinstance(total, bool) else None
    max_steps = args.max_steps or config_total
    if max_steps is None:
        raise ValueError("--max_steps is required: the ds_config scheduler leaves total_num_steps "
                         f"{'auto' if total == 'auto' else 'unset'} (a --time_budget run needs it too: the "
                         "learning-rate schedule is in steps)")
    if config_total is not None and args.max_steps and args.max_steps != config_total:
        notes.append(f"--max_steps {args.max_steps} differs from the scheduler's total_num_steps {config_total}; "
                     "the schedule is kept as configured")
    if isinstance(scheduler, dict):
        if scheduler.get("type") in SCHEDULERS_WITH_TOTAL and total in (None, "auto"):
            params["total_num_steps"] = max_steps
        if params.get("warmup_num_steps") in (None, "auto"):
            params["warmup_num_steps"] = max(1, math.ceil(PAPER_WARMUP_FRACTION * max_steps))
        lr = (optimizer.get("params") or {}).get("lr")
        if params.get("warmup_max_lr") in (None, "auto") and lr is not None and scheduler.get("type") != "WarmupCosineLR":
            params["warmup_max_lr"] = lr
        if scheduler.get("type") in ("WarmupDecayLR", "WarmupLR"):
            params.setdefault("warmup_type", "linear")
        bad = sorted(k for k, v in params.items() if v == "auto")
        if bad:
            raise ValueError(f"ds_config scheduler.params {bad}: 'auto' is not supported for these keys")
    return max_steps


def _resolve_monitors(ds_config: dict, output_dir: str, job_name: str) -> None:
    """Monitor sections with an "auto" / empty output_path write under output_dir."""
    for key in MONITORS:
        section = ds_config.get(key)
        if not isinstance(section, dict) or not section.get("enabled"):
            continue
        if section.get("output_path") in (None, "", "auto"):
            section["output_path"] = os.path.join(output_dir, key.replace("_monitor", ""))
        section.setdefault("job_name", job_name)
    if _enabled(ds_config, "tensorboard"):
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise ValueError("ds_config tensorboard.enabled needs the tensorboard package "
                             "(pip install tensorboard) or set it to false") from None


def _resolve_model(args, sift: SiftConfig):
    from .models import PRESETS, bert_config

    if args.model not in PRESETS and not os.path.exists(args.model):
        raise ValueError(f"--model {args.model!r} is neither a preset ({', '.join(PRESETS)}) nor an HF config path")
    try:
        config = bert_config(args.model, vocab_size=args.vocab_size)
    except (OSError, ValueError) as err:
        raise ValueError(f"--model {args.model}: cannot read the config ({err})") from None
    if args.seq_len > config.max_position_embeddings:
        raise ValueError(f"--seq_len {args.seq_len} exceeds the model's max_position_embeddings "
                         f"({config.max_position_embeddings})")
    from .data import MIN_SEQ_LEN

    if args.seq_len < MIN_SEQ_LEN:
        raise ValueError(f"--seq_len {args.seq_len} is too short (at least {MIN_SEQ_LEN})")
    if sift.enabled:
        sift.validate_for_model(config.num_hidden_layers)
    return config


def _resolve_data(args) -> Optional[List[str]]:
    from .data import check_not_empty, resolve_data_files

    if args.data and args.dataset_name:
        raise ValueError("give either --data or --dataset_name, not both")
    return check_not_empty(resolve_data_files(args.data)) if args.data else None


def _check_tokenizer(args) -> None:
    name = args.tokenizer
    if name and not os.path.exists(name) and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise ValueError(f"--tokenizer {name}: no such file or directory")


def _make_output_dir(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--output_dir {path}: cannot create it ({err.strerror})") from None
    if not os.access(path, os.W_OK):
        raise ValueError(f"--output_dir {path}: not writable")


def auto_interval(value: Optional[int], max_steps: int, fraction: float, cap: int) -> int:
    """An explicit interval, or ``fraction`` of the run capped at ``cap`` steps (at least 1)."""
    if value is not None:
        return value
    return max(1, min(cap, int(max_steps * fraction)))


# ---------------------------------------------------------------------------------------- job
def init_distributed() -> None:
    """``deepspeed.init_distributed``; a plain ``python`` start becomes a world of one."""
    import deepspeed

    if "WORLD_SIZE" not in os.environ and "OMPI_COMM_WORLD_SIZE" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(port)))
    deepspeed.init_distributed(verbose=False)


def configure_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format="[%(asctime)s] [%(name)s] %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("sift_ds").setLevel(level)
    if rank != 0:
        import datasets

        datasets.disable_progress_bars()


def obtain_tokenizer(plan: RunPlan, corpus_for_training):
    """The tokenizer: --tokenizer; or, when resuming, the run's saved one; or a WordPiece vocabulary
    trained on rank 0 and sent to the other ranks (so every rank has the same vocabulary)."""
    import torch.distributed as dist

    from . import tokenizer as tok

    run_tokenizer = os.path.join(plan.output_dir, "tokenizer")
    if plan.args.tokenizer:
        return tok.load_tokenizer(plan.args.tokenizer), plan.args.tokenizer
    if plan.resume is not None:
        # The resumed run's own: in this output_dir, or next to the checkpoint directory resumed from.
        for path in (run_tokenizer, os.path.join(os.path.dirname(os.path.abspath(plan.resume[0])), "tokenizer")):
            if os.path.isdir(path):
                return tok.load_tokenizer(path), f"{path} (the resumed run's)"
    payload = [None]
    if dist.get_rank() == 0:
        trained = tok.train_wordpiece(tok.batched_texts(corpus_for_training()), plan.args.vocab_size)
        payload = [tok.to_json(trained)]
    dist.broadcast_object_list(payload, src=0)
    source = f"WordPiece trained on the corpus (vocab_size {plan.args.vocab_size}), saved to {run_tokenizer}"
    return tok.from_json(payload[0]), source


@dataclass
class Job:
    plan: RunPlan
    engine: Any
    trainer: Any
    tokenizer: Any

    def run(self) -> Dict[str, float]:
        result = self.trainer.train()
        if self.trainer.step >= self.plan.max_steps:
            export_model(self.engine, self.tokenizer, os.path.join(self.plan.output_dir, "final"))
        if self.engine.global_rank == 0:
            summary = {"step": self.trainer.step, **result, "elapsed_s": round(self.trainer.elapsed_s, 1)}
            logger.info("finished: %s", json.dumps(summary))
        return result


def setup_job(plan: RunPlan) -> Job:
    """Process group, tokenizer, data, model, DeepSpeed engine, loader, trainer (and resume)."""
    import torch.distributed as dist
    from transformers import set_seed

    from .loader import GrossBatchLoader, MaskingCollator, fixed_eval_batches
    from .metrics import MetricsLogger
    from .training import Trainer

    args = plan.args
    init_distributed()
    rank = dist.get_rank()
    configure_logging(rank)
    for note in plan.notes:
        logger.info(note)
    set_seed(args.seed)
    tokenizer, data = prepare_data(plan)
    engine, flops = build_engine(plan, len(tokenizer))

    collator = MaskingCollator(tokenizer, args.mlm_probability)
    loader = GrossBatchLoader(data.train, collator, engine.gross_batch_size, engine.rank, engine.world_size, args.seed)
    eval_batches = fixed_eval_batches(data.val, collator, args.eval_batch_size or plan.micro_batch, engine.rank,
                                      engine.world_size, args.data_seed)
    state = checkpoint.load(engine, *plan.resume) if plan.resume is not None else None
    metrics = MetricsLogger(plan.output_dir, plan.max_steps, engine.global_steps, engine.monitor, enabled=rank == 0)
    run_info = {"seq_len": args.seq_len, "objective": args.objective, "world_size": plan.world_size}
    trainer = Trainer(engine, loader, eval_batches, metrics, flops, loop_options(plan), run_info)
    if state is not None:
        trainer.restore(state)
    if rank == 0:
        if state is None or not os.path.isdir(os.path.join(plan.output_dir, "tokenizer")):
            tokenizer.save_pretrained(os.path.join(plan.output_dir, "tokenizer"))
        write_run_config(plan)
    return Job(plan, engine, trainer, tokenizer)


def prepare_data(plan: RunPlan):
    """(tokenizer, PretrainData): the corpus, then the tokenizer, then tokenized blocks, with each
    node's first rank filling the ``datasets`` cache before the others read it."""
    from . import data as data_lib

    args = plan.args
    with data_lib.main_process_first():
        corpus = data_lib.load_corpus(plan.data_files, args.text_field, args.dataset_name, args.dataset_config,
                                      args.dataset_split, args.cache_dir)
    tokenizer, source = obtain_tokenizer(plan, lambda: corpus)
    logger.info("tokenizer: %s (%d tokens)", source, len(tokenizer))
    with data_lib.main_process_first():
        data = data_lib.build_pretrain_data(corpus, tokenizer, args.seq_len, args.objective, args.val_fraction,
                                            args.max_val_samples, args.data_seed, args.cache_dir)
    logger.info("data: %d documents, %d tokens -> %d train / %d validation blocks of %d tokens (%s)",
                data.num_documents, data.num_tokens, len(data.train), len(data.val), args.seq_len, args.objective)
    return tokenizer, data


def build_engine(plan: RunPlan, vocab_size: int):
    """(SiftEngine, FlopsModel): the BERT (apex FusedLayerNorm when available), AdamW weight-decay
    groups (apex FusedAdam when available), ``sift_ds.initialize``."""
    import sift_ds

    from .fused import apex_adam, fuse_layer_norms, weight_decay_groups
    from .metrics import FlopsModel
    from .models import build_bert

    args = plan.args
    model = build_bert(args.model, vocab_size, args.objective,
                       max_position_embeddings=plan.model_config.max_position_embeddings,
                       sparse_head=args.sparse_mlm_head)
    count, norm = fuse_layer_norms(model)
    groups = weight_decay_groups(model)
    client_optimizer = apex_adam(groups, plan.ds_config)
    flops = FlopsModel.for_bert(model, args.seq_len, plan.sift.exit_layer, args.mlm_probability,
                                sparse_head=args.sparse_mlm_head)
    engine, _, _, _ = sift_ds.initialize(model=model, model_parameters=groups, config=plan.ds_config,
                                         optimizer=client_optimizer)
    basic = getattr(engine.engine, "basic_optimizer", None) or client_optimizer
    logger.info("model: %s, %.1fM parameters; layer norm: %s%s; optimizer: %s.%s%s", args.model,
                sum(p.numel() for p in model.parameters()) / 1e6, norm, f" (x{count})" if count else "",
                type(basic).__module__, type(basic).__name__,
                "" if client_optimizer else " (apex.optimizers not available)")
    logger.info("batch: micro %d, gross %d per rank, grad-accum %d, world %d, global %d; sift: %s",
                plan.micro_batch, engine.gross_batch_size, plan.grad_accum, plan.world_size, plan.train_batch,
                json.dumps(plan.sift.to_dict()))
    return engine, flops


def loop_options(plan: RunPlan):
    from .training import LoopOptions

    args = plan.args
    return LoopOptions(
        max_steps=plan.max_steps,
        log_interval=auto_interval(args.log_interval, plan.max_steps, 0.02, 100),
        eval_interval=auto_interval(args.eval_interval, plan.max_steps, 0.1, 1000),
        save_interval=args.save_interval,
        exit_interval=args.exit_interval,
        time_budget_s=(args.time_budget or 0.0) * 60.0,
        save_dir=checkpoint.checkpoint_dir(plan.output_dir),
        keep_checkpoints=args.keep_checkpoints,
        peak_tflops=args.peak_tflops,
        seq_len=args.seq_len,
    )


def write_run_config(plan: RunPlan) -> None:
    """``run_config.json``: the resolved options and the ds_config as given to DeepSpeed."""
    record = {"args": vars(plan.args), "ds_config": plan.ds_config, "world_size": plan.world_size,
              "max_steps": plan.max_steps}
    with open(os.path.join(plan.output_dir, "run_config.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, default=str)


def export_model(engine, tokenizer, out_dir: str) -> None:
    """The trained model in Hugging Face format (``from_pretrained``-loadable) with its tokenizer;
    under ZeRO-3 the partitioned parameters are gathered first."""
    import torch.distributed as dist

    from .zero import full_parameters

    module = engine.module
    with full_parameters([module]):
        if dist.get_rank() == 0:
            module.save_pretrained(out_dir, safe_serialization=True)
            tokenizer.save_pretrained(out_dir)
    if dist.is_initialized():
        dist.barrier()
