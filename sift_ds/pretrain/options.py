"""The pretraining job's options as a typed, frozen dataclass, and the command line generated from it.

Precedence: the dataclass defaults < the ds_config's ``"pretrain"`` section < the command line.
The ``--sift_*`` flags are generated from ``SiftConfig``'s fields and each registered criterion's keys
(``sift_ds.config.key_fields``), so a new field gets its flag.
Nothing here touches argparse internals: options not given on the command line are simply absent
from the parsed namespace (``default=SUPPRESS``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..config import key_fields
from ..config_io import CLI_TYPES, load_ds_config, unknown_key_message
from .corpus import TEXT_SAMPLES
from .data import OBJECTIVES

PROG = "pretrain_bert.py"
PRETRAIN_SECTION = "pretrain"  # ds_config section with defaults for the options
SIFT_PREFIX = "sift_"


def _opt(default, help: str, group: str, choices: Optional[Sequence[str]] = None, metavar: Optional[str] = None):
    return field(default=default, metadata={"help": help, "group": group, "choices": choices, "metavar": metavar})


@dataclass(frozen=True)
class PretrainOptions:
    """Every option of ``launch/pretrain_bert.py`` (see ``--help``), validated by ``plan.resolve_plan``."""

    ds_config: Optional[str] = _opt(None, "DeepSpeed config with a 'sift' section (and optionally a 'pretrain' section)",
                                    "DeepSpeed", metavar="JSON")
    local_rank: int = _opt(int(os.environ.get("LOCAL_RANK", "0")), "set by the DeepSpeed launcher", "DeepSpeed")
    model: str = _opt("base", "BERT preset (tiny, mini, small, medium, base, large), family preset (tiny_roberta, "
                 "tiny_xlm_roberta, tiny_electra, tiny_distilbert, tiny_modernbert, tiny_deberta_v2) or an HF "
                 "masked-LM config (config.json or its directory)", "model and data")
    sparse_mlm_head: bool = _opt(True, "training forward runs the MLM head on masked positions only (same loss, as "
                                       "MosaicBERT / academic-budget-bert); false: HF's head on every position",
                                 "model and data")
    objective: str = _opt("mlm", "masked LM, or masked LM + next sentence", "model and data", OBJECTIVES)
    seq_len: int = _opt(128, "tokens per sequence", "model and data")
    data: Optional[List[str]] = _opt(None, "text files (blank line between documents) or JSON-lines files (.json, "
                                           ".jsonl, optionally .gz/.xz); repeatable; None: CPython's pydoc_data "
                                           "documentation text", "model and data", metavar="PATH_OR_GLOB")
    text_field: str = _opt("text", "text field of JSON lines / hub datasets", "model and data")
    sample_by: str = _opt("paragraph", "what one document of a text file is: a blank-line-separated paragraph (BERT's "
                                       "format), a line (run_mlm.py's) or the whole file", "model and data", TEXT_SAMPLES)
    dataset_name: Optional[str] = _opt(None, "a `datasets` hub name (needs a network)", "model and data")
    dataset_config: Optional[str] = _opt(None, "the hub dataset's configuration name", "model and data")
    dataset_split: str = _opt("train", "the hub dataset's split", "model and data")
    cache_dir: Optional[str] = _opt(None, "`datasets` cache; None: the datasets library's", "model and data")
    prepared: Optional[str] = _opt(None, "a directory of launch/prepare_data.py: its memory-mapped blocks, corpus and "
                                         "tokenizer (instead of --data / --dataset_name)", "model and data", metavar="DIR")
    allow_embedded_corpus: bool = _opt(False, "train a model of BERT-base size or larger (hidden size >= 768) on the "
                                               "embedded demo corpus when no --data, --dataset_name or --prepared is "
                                               "given (refused otherwise)", "model and data")
    tokenizer: Optional[str] = _opt(None, "tokenizer path or hub name; None: train WordPiece on the corpus",
                                    "model and data")
    vocab_size: int = _opt(30522, "size of the trained WordPiece vocabulary", "model and data")
    val_fraction: float = _opt(0.05, "fraction of blocks held out for validation", "model and data")
    max_val_samples: int = _opt(2000, "cap on the validation blocks", "model and data")
    data_seed: int = _opt(0, "seed of the validation split and NSP pairs", "model and data")
    holdout_fraction: float = _opt(0.0, "share of the training blocks held out for a reference model (reducible "
                                        "loss); 0: none", "model and data")
    train_on: str = _opt("rest", "with --holdout_fraction: train on the rest of the training blocks, or on the "
                                 "held-out share (the reference model)", "model and data", ("rest", "holdout"))
    mlm_probability: float = _opt(0.15, "masked fraction (80/10/10)", "model and data")
    max_steps: Optional[int] = _opt(None, "optimizer steps; None: the scheduler's total_num_steps", "training")
    lr_warmup_steps: Optional[int] = _opt(None, "learning-rate warm-up steps (the scheduler's warmup_num_steps; "
                                                "alias --warmup_steps); None: the ds_config's, or 0.2%% of max_steps "
                                                "when it says auto", "training")
    time_budget: Optional[float] = _opt(None, "stop (with a checkpoint) after this much training wall time, "
                                              "cumulative over resumes", "training", metavar="MINUTES")
    seed: int = _opt(42, "initialisation, dropout, data order, masks", "training")
    eval_batch_size: Optional[int] = _opt(None, "None: train_micro_batch_size_per_gpu", "training")
    dist_timeout_minutes: float = _opt(30.0, "timeout of the process group's collectives (DeepSpeed's default: 10): "
                                             "a rank that waits longer, e.g. behind rank 0's data preparation, fails",
                                       "training")
    compile: bool = _opt(False, "torch.compile the training forward (DeepSpeed's engine.compile) and SIFT's prefix "
                                "forward; the masked-positions-only MLM head then gathers a fixed number of rows "
                                "per batch, padded, so that no shape changes between steps", "training")
    compile_backend: str = _opt("inductor", "the torch.compile backend with --compile true (e.g. inductor, "
                                            "aot_eager, eager)", "training")
    async_convergence: Optional[str] = _opt(None, "with --objective mlm+nsp: distil NSP from the model's own outputs "
                                                  "once its validation metric has converged (a JSON object or a file "
                                                  "holding one; docs/multitask.md)", "training", metavar="JSON")
    peak_tflops: float = _opt(312.0, "peak TFLOP/s per device for MFU (A100 bf16)", "training")
    output_dir: str = _opt("runs/bert", "checkpoints, metrics, tokenizer, final model", "logging and checkpoints")
    log_interval: Optional[int] = _opt(None, "None: 2%% of max_steps, at most 100", "logging and checkpoints")
    eval_interval: Optional[int] = _opt(None, "0: only at the end; None: 10%% of max_steps, at most 1000",
                                        "logging and checkpoints")
    probe_interval: int = _opt(0, "early-exit fidelity probe (Spearman of exit-k scores vs the full loss) every N "
                                  "steps on a fixed validation batch; 0: at evaluations only", "logging and checkpoints")
    save_interval: int = _opt(1000, "0: only at the end", "logging and checkpoints")
    keep_checkpoints: int = _opt(0, "keep the newest N checkpoints (0: all)", "logging and checkpoints")
    exit_interval: int = _opt(0, "save and exit after a step divisible by N", "logging and checkpoints")
    resume: Optional[str] = _opt(None, "auto: the latest checkpoint in output_dir, if any; or a checkpoint path",
                                 "logging and checkpoints", metavar="auto|PATH")
    overwrite_output_dir: bool = _opt(False, "start a new run in an output_dir that holds another run's checkpoints or "
                                             "metrics: that run's files are deleted first (without it, such a start is "
                                             "refused; --resume auto continues the run instead)",
                                      "logging and checkpoints")
    trust_checkpoint: bool = _opt(False, "load a checkpoint that fails its sha256 manifest or has none, or adopt the "
                                         "checkpoints of a directory without run.json (every load is weights-only "
                                         "all the same)",
                                  "logging and checkpoints")
    check_only: bool = _opt(False, "validate the flags, ds_config, model, tokenizer, data paths and the resume point, "
                                   "print the warnings, and exit (0 when valid, else 2 with one line), without "
                                   "preparing data or starting a process group", "logging and checkpoints")
    sift: Mapping[str, Any] = field(default_factory=dict, metadata={"cli": False})  # --sift_* overrides given

    def as_record(self) -> Dict[str, Any]:
        return {f.name: (dict(v) if isinstance(v := getattr(self, f.name), Mapping) else v)
                for f in dataclasses.fields(self)}


# options the "pretrain" section may not set (trusting a checkpoint is a decision per command)
NOT_IN_SECTION = ("ds_config", "local_rank", "sift", "trust_checkpoint", "check_only", "overwrite_output_dir")
# other flags of an option (the first is --<name>), also accepted as keys of the "pretrain" section
ALIASES = {"ds_config": ("deepspeed_config",), "lr_warmup_steps": ("warmup_steps",)}


def _base_type(annotation: str) -> str:
    """'Optional[int]' -> 'int', 'List[str]' -> 'str' (annotations are strings here)."""
    inner = annotation.split("[", 1)[-1].rstrip("]") if "[" in annotation else annotation
    return inner.split("[")[-1]


def _add_field(group, f: dataclasses.Field, flag: str, dest: str, default: Any = dataclasses.MISSING) -> None:
    kind, meta = f.metadata.get("kind") or _base_type(f.type), f.metadata
    default = f.default if default is dataclasses.MISSING else default
    default = None if default is dataclasses.MISSING else default
    kwargs = dict(dest=dest, default=argparse.SUPPRESS, help=f"{meta['help']} (default: {default})",
                  choices=meta.get("choices"),
                  type=CLI_TYPES[kind], metavar=meta.get("metavar") or ("BOOL" if kind == "bool" else None))
    if f.type.startswith("Optional[List") or f.type.startswith("List"):
        kwargs["action"] = "append"
    if kind == "bool":  # `--check_only` alone means `--check_only true`
        kwargs.update(nargs="?", const=True)
    group.add_argument(flag, **kwargs)


def build_parser(prog: str = PROG, description: str = "Pretrain a BERT from scratch with SIFT on DeepSpeed.",
                 defaults: Optional[Mapping[str, Any]] = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description,
                                epilog="Defaults: see PretrainOptions; the ds_config's 'pretrain' section "
                                       "overrides them, and the command line overrides both.")
    groups: Dict[str, Any] = {}
    for f in dataclasses.fields(PretrainOptions):
        if f.metadata.get("cli") is False:
            continue
        group = groups.setdefault(f.metadata["group"], p.add_argument_group(f.metadata["group"]))
        _add_field(group, f, f"--{f.name}", f.name, (defaults or {}).get(f.name, f.default))
        for alias in ALIASES.get(f.name, ()):
            group.add_argument(f"--{alias}", dest=f.name, default=argparse.SUPPRESS, type=CLI_TYPES[_base_type(f.type)],
                               help=f"alias of --{f.name}")
    ds = groups["DeepSpeed"]
    ds.add_argument("--deepspeed", dest="deepspeed_flag", nargs="?", const=True, default=argparse.SUPPRESS,
                    metavar="JSON", help="alias of --ds_config; a bare --deepspeed flag (DeepSpeed's convention) "
                                         "is ignored")
    sift = p.add_argument_group("SIFT: overrides of the ds_config 'sift' section")
    for name, f in key_fields():
        _add_field(sift, f, f"--{SIFT_PREFIX}{name}", f"{SIFT_PREFIX}{name}")
    return p


def _check_section_value(f: dataclasses.Field, value: Any) -> Any:
    """A "pretrain" section value of the field's type (JSON ints are floats' too); ValueError otherwise."""
    kind = _base_type(f.type)
    if value is None:
        return None
    many = "List" in f.type
    values = value if many and isinstance(value, list) else [value]
    for v in values:
        ok = {"bool": isinstance(v, bool), "int": isinstance(v, int) and not isinstance(v, bool),
              "float": isinstance(v, (int, float)) and not isinstance(v, bool), "str": isinstance(v, str)}[kind]
        choices = f.metadata.get("choices")
        if not ok or (choices and v not in choices):
            want = f"one of {list(choices)}" if choices and ok else kind
            raise ValueError(f"ds_config '{PRETRAIN_SECTION}' section: {f.name} must be {want}, got {v!r}")
    return list(values) if many else value


def read_pretrain_section(ds_config: str) -> Dict[str, Any]:
    """The ``"pretrain"`` section of the ds_config file, its keys and value types checked."""
    section = load_ds_config(ds_config).get(PRETRAIN_SECTION) or {}
    if not isinstance(section, dict):
        raise ValueError(f"ds_config key '{PRETRAIN_SECTION}' must be a JSON object")
    fields = {f.name: f for f in dataclasses.fields(PretrainOptions) if f.name not in NOT_IN_SECTION}
    names = {alias: name for name, aliases in ALIASES.items() if name in fields for alias in aliases}
    checked = {}
    for key, value in section.items():
        if isinstance(key, str) and key.startswith("_"):  # a note
            continue
        name = names.get(key, key)
        if name not in fields:
            raise ValueError(unknown_key_message(f"ds_config '{PRETRAIN_SECTION}' section", key, fields))
        if name in checked:
            raise ValueError(f"ds_config '{PRETRAIN_SECTION}' section: {key} is another name of {name}: give one")
        if value is not None:
            checked[name] = _check_section_value(fields[name], value)
    return checked


def parse_options(argv: Sequence[str], parser: Optional[argparse.ArgumentParser] = None,
                  defaults: Optional[Mapping[str, Any]] = None) -> PretrainOptions:
    """Command line + the ds_config's "pretrain" section + ``defaults`` (an application's own, e.g. the
    causal-LM job's) -> PretrainOptions (argparse exits on a bad flag; a bad section is a ValueError
    naming the key)."""
    parser = parser or build_parser()
    given = vars(parser.parse_args(list(argv)))
    alias = given.pop("deepspeed_flag", None)
    if isinstance(alias, str):
        if given.get("ds_config", alias) != alias:
            parser.error(f"--deepspeed {alias} and --ds_config {given['ds_config']} disagree")
        given["ds_config"] = alias
    sift = {k[len(SIFT_PREFIX):]: given.pop(k) for k in list(given) if k.startswith(SIFT_PREFIX)}
    section = read_pretrain_section(given["ds_config"]) if given.get("ds_config") else {}
    return PretrainOptions(**{**(defaults or {}), **section, **given, "sift": sift})


def record_json(options: PretrainOptions) -> str:
    return json.dumps(options.as_record(), indent=2, default=str)
