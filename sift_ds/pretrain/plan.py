"""The run plan: ``PretrainOptions`` + the ds_config, read once, validated against each other, and
resolved into a frozen ``RunPlan`` before any process group, model or data exists. Every error is a
ValueError naming the option or config key at fault."""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

from deepspeed.accelerator import get_accelerator
from transformers import PretrainedConfig

from ..batching import BatchSizes, resolve_batch_sizes, world_size_from_env
from .. import registry
from .. import criteria
from ..config import SECTION, SiftConfig, canonical_section
from ..config_io import ALIASES, load_ds_config
from . import checkpoint, ds_check, ds_policy, tracking
from .corpus import check_compression, check_dataset_name, check_embedded_corpus, check_not_empty, resolve_data_files
from .data import MIN_SEQ_LEN
from .identity import RunIdentity
from .models import bert_presets, causal_presets, family_presets, max_sequence_length, model_config
from .options import PRETRAIN_SECTION, PretrainOptions
from .output_dir import overwrite_entries
from .prepared import check_prepared, in_job_notes
from .resume import ResumePoint, check_same_model, decide, seed_warnings
from .reference_check import check_reference_model
from .run_record import check_resume
from .tokenizer import load_tokenizer
from .unigram import job_unigram_table
from .vocab_check import check_vocabulary, corpus_sample

POSITIVE = ("max_steps", "log_interval", "seq_len", "vocab_size", "eval_batch_size", "time_budget", "peak_tflops",
            "max_val_samples", "lr_warmup_steps",  # DeepSpeed's warm-up schedulers refuse 0 warm-up steps
            "dist_timeout_minutes")
NON_NEGATIVE = ("eval_interval", "save_interval", "exit_interval", "keep_checkpoints", "probe_interval")
SEEDS = ("seed", "data_seed")  # numpy's and the loader's seeds: 0 <= seed < 2**32
SMALL_VOCAB = 1000  # a trained WordPiece vocabulary below this is little more than the corpus's characters


@dataclass(frozen=True)
class RunPlan:
    """Resolved, validated settings of one run. ``ds_config`` is what DeepSpeed gets (batch sizes,
    schedule and monitor paths filled in; its "sift" section is ``sift.to_dict()``, for the record)."""

    options: PretrainOptions
    ds_config: dict
    sift: SiftConfig
    world_size: int
    batch: BatchSizes
    gross_batch: int
    max_steps: int
    model_config: PretrainedConfig  # its vocab_size and special-token ids comes from the tokenizer later
    data_files: Optional[List[str]]
    resume: Optional[ResumePoint]
    identity: RunIdentity  # the run continued, or a new one (its id drawn at start-up)
    notes: List[str] = field(default_factory=list)  # start-up decisions, logged by rank 0
    warnings: List[str] = field(default_factory=list)  # likely mistakes that do not stop the run, rank 0
    delete_at_start: Tuple[str, ...] = ()  # --overwrite_output_dir: the previous run's files (output_dir.py)

    @property
    def output_dir(self) -> str:
        return self.options.output_dir


def resolve_plan(options: PretrainOptions, world_size: Optional[int] = None,
                 accelerator: Optional[str] = None, create_output_dir: bool = True, starts_run: bool = True) -> RunPlan:
    """Validate the options and the ds_config against each other (no side effect but creating the
    output dir, which ``create_output_dir=False`` only checks). ``starts_run`` False: a tool reading a
    run's settings without training (an output directory holding a run is then not refused)."""
    world_size = world_size or world_size_from_env()
    accelerator = accelerator or get_accelerator().device_name()
    notes: List[str] = []
    warnings: List[str] = []
    if not options.ds_config:
        raise ValueError("--ds_config is required (a DeepSpeed JSON config with a 'sift' section; see ds_configs/)")
    ds_config = load_ds_config(options.ds_config)
    ds_config.pop(PRETRAIN_SECTION, None)
    sift = resolve_sift(ds_config.get(SECTION), options.sift, options.output_dir)
    ds_config[SECTION] = sift.to_dict()
    batch = resolve_batch_sizes(ds_config, world_size)
    ds_config.update(batch.as_ds_config())
    gross = sift.gross_batch_size(batch.micro)
    warnings += ds_policy.check_precision(ds_config, accelerator, options.check_only)
    check_ranges(options)
    ds_check.check_types(ds_config)
    ds_check.check_values(ds_config)
    max_steps = ds_policy.resolve_schedule(ds_config, options.max_steps, notes, options.lr_warmup_steps)
    sift = ds_policy.resolve_start(sift, ds_config, options.lr_warmup_steps is not None)
    ds_config[SECTION] = sift.to_dict()
    tracking.resolve_monitors(ds_config, options.output_dir, "sift" if sift.enabled else "vanilla")
    ds_policy.resolve_optimizer_path(ds_config, accelerator, notes)
    ds_policy.check_compile(options.compile, options.compile_backend, ds_config)
    warnings += ds_check.check_with_deepspeed(ds_config)
    check_kernel(sift, accelerator)
    model_config = resolve_model(options, sift)
    check_embedded_corpus(options, getattr(model_config, "hidden_size", 0))  # --data-less base / large: refused
    if sift.enabled and sift.start_step >= max_steps:
        warnings.append(f"sift.selection_start_step={sift.start_step} >= max_steps={max_steps}: SIFT never selects "
                        "in this run (every step trains on a random subset, as before the start)")
    if options.data and options.dataset_name:
        raise ValueError("give either --data or --dataset_name, not both")
    options = check_prepared(options) if options.prepared else options  # launch/prepare_data.py's, checked
    data_files = check_compression(check_not_empty(resolve_data_files(options.data))) if options.data else None
    notes += in_job_notes(data_files)
    if options.dataset_name:
        check_dataset_name(options.dataset_name)
    tokenizer = check_tokenizer(options.tokenizer, causal=options.objective == "clm",
                                sample=lambda: [] if options.prepared else corpus_sample(  # --prepared: by digest
                                    data_files, options.text_field, options.dataset_name, options.sample_by))
    check_reference_model(sift, options.seq_len, tokenizer)  # the vocabulary again at start-up, with the run's tokenizer
    if create_output_dir:
        make_output_dir(options.output_dir)
    else:
        check_output_dir(options.output_dir)
    decision = decide(options.resume, options.output_dir, options.trust_checkpoint, options.overwrite_output_dir,
                      refuse_used_dir=starts_run)
    delete = overwrite_entries(options, ds_config, sift, data_files, notes) if options.overwrite_output_dir else []
    resume = decision.point
    notes += decision.notes
    warnings += decision.warnings
    if resume is not None:
        check_same_model(resume, model_config, options.seq_len, options.objective)
        warnings += seed_warnings(resume, options.seed, options.data_seed)
        warnings += check_resume(resume.path, resume.run, options, sift, data_files, fork=decision.identity.new)
    elif not options.tokenizer and options.vocab_size < SMALL_VOCAB:
        warnings.append(f"--vocab_size {options.vocab_size} is tiny: the trained vocabulary is then "
                        f"little more than the corpus's characters (BERT uses 30522; below {SMALL_VOCAB} is "
                        "likely a mistake)")
    return RunPlan(options, ds_config, sift, world_size, batch, gross, max_steps, model_config, data_files, resume,
                   decision.identity, notes, warnings, tuple(delete))


def resolve_sift(section, overrides, output_dir: str = "") -> SiftConfig:
    """The "sift" section with the ``--sift_*`` overrides applied; an error names the flag that set it.
    freq_loss's unigram baseline without a table gets the one the job computes in ``output_dir``."""
    if section is not None and not isinstance(section, dict):
        raise ValueError("ds_config key 'sift' must be a JSON object")
    # an alias flag replaces the key; a criterion's key flag replaces that key in its section
    merged = criteria.merge_sections(canonical_section(section or {}), canonical_section(overrides))
    freq = merged.get("freq_loss") or {}
    if (merged.get("criterion") == "freq_loss" and freq.get("frequency_baseline") == "unigram"
            and not freq.get("frequency_table") and output_dir):
        merged["freq_loss"] = {**freq, "frequency_table": job_unigram_table(output_dir)}
    try:
        return SiftConfig.from_dict(merged)
    except ValueError as err:
        flags = [f"--sift_{key}" for key in overrides if f"sift.{ALIASES.get(key, key)}" in str(err)
                 or (criteria.owner_of(key) and f"sift.{criteria.owner_of(key).name}.{key}" in str(err))]
        raise ValueError(f"{err} (set by {flags[0]})" if flags else str(err)) from None


def check_kernel(sift: SiftConfig, accelerator: str) -> None:
    """The Triton scorer's requirements, before any work: the package, and its interpreter on the CPU."""
    if not sift.enabled or sift.kernel != "triton":
        return
    if importlib.util.find_spec("triton") is None:
        raise ValueError("sift.kernel='triton' needs the triton package (or use 'auto' / 'torch')")
    if accelerator == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("sift.kernel='triton' on the CPU needs TRITON_INTERPRET=1 (or use 'auto' / 'torch')")


def check_ranges(options: PretrainOptions) -> None:
    for name in POSITIVE + NON_NEGATIVE:
        value = getattr(options, name)
        allow_zero = name in NON_NEGATIVE
        if value is not None and (value < 0 or (value == 0 and not allow_zero)):
            raise ValueError(f"--{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    for name in SEEDS:
        value = getattr(options, name)
        if not 0 <= value < 2**32:
            raise ValueError(f"--{name} must be in [0, 2**32), got {value}")
    for name in ("val_fraction", "mlm_probability"):
        if not 0.0 < getattr(options, name) < 1.0:
            raise ValueError(f"--{name} must be in (0, 1), got {getattr(options, name)}")
    if not 0.0 <= options.holdout_fraction < 1.0:  # 0: no holdout
        raise ValueError(f"--holdout_fraction must be in [0, 1), got {options.holdout_fraction}")
    for f in dataclasses.fields(options):  # NaN passes every comparison above; inf is no setting either
        value = getattr(options, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{f.name} must be a finite number, got {value}")


def resolve_model(options: PretrainOptions, sift: SiftConfig) -> PretrainedConfig:
    causal = options.objective == "clm"
    presets = [*causal_presets()] if causal else [*bert_presets(), *family_presets()]
    if registry.preset(options.model) is None and not os.path.exists(options.model):
        raise ValueError(f"--model {options.model!r} is neither a preset ({', '.join(presets)}) nor an HF config path")
    config = model_config(options.model, vocab_size=options.vocab_size)
    if causal and not registry.is_causal(config.model_type):
        causal_types = ", ".join(key for key in registry.model_types() if registry.is_causal(key))
        raise ValueError(f"--model {options.model}: model_type {config.model_type!r} is not a causal LM with a built-in "
                         f"early-exit adapter ({causal_types}); masked LMs train with launch/pretrain_bert.py")
    if not causal and registry.is_causal(config.model_type):
        raise ValueError(f"--model {options.model}: model_type {config.model_type!r} is not a masked-LM model (a causal "
                         "LM: train it with launch/pretrain_gpt.py)")
    if config.model_type != "bert" and options.objective == "mlm+nsp":
        raise ValueError(f"--objective {options.objective} needs a BERT model (next-sentence head); --model "
                         f"{options.model} is a {config.model_type}")
    limit = max_sequence_length(config)
    if options.seq_len > limit:
        offset = "" if limit == config.max_position_embeddings else f", {limit} positions after the padding offset"
        raise ValueError(f"--seq_len {options.seq_len} exceeds the model's max_position_embeddings "
                         f"({config.max_position_embeddings}{offset})")
    if options.seq_len < MIN_SEQ_LEN:
        raise ValueError(f"--seq_len {options.seq_len} is too short (at least {MIN_SEQ_LEN})")
    if sift.enabled:
        sift.validate_for_model(config.num_hidden_layers)
    return config


def check_tokenizer(name: Optional[str], causal: bool = False, sample: Callable[[], List[str]] = list):
    """A local ``--tokenizer`` is loaded (cheap, no code of its own runs) and checked against a
    ``sample()`` of the corpus (``vocab_check``) so that a wrong one fails now; returns it (None
    without a local one)."""
    if not name:
        return None
    if not os.path.exists(name):
        if name.startswith((".", "/", "~")) or name.count("/") > 1:
            raise ValueError(f"--tokenizer {name}: no such file or directory")
        return None  # a hub name: loaded (with a network) at start-up
    try:
        tokenizer = load_tokenizer(name, causal)
        check_vocabulary(tokenizer, sample())
    except ValueError as err:
        raise ValueError(f"--tokenizer {name}: {err}") from None
    return tokenizer


def check_output_dir(path: str) -> None:
    """That ``path`` exists as a writable directory or could be created (nothing is created)."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK):
        raise ValueError(f"--output_dir {path}: cannot create it or write to it ({existing} is not a writable "
                         "directory)")


def make_output_dir(path: str, flag: str = "--output_dir") -> None:
    """Create ``path`` if needed; ValueError naming ``flag`` when it cannot be created or written."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{flag} {path}: cannot create it ({err.strerror})") from None
    if not os.access(path, os.W_OK):
        raise ValueError(f"{flag} {path}: not writable")
