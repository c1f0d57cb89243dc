"""``sift_ds.hf.SiftTrainer``: SIFT in a ``transformers.Trainer`` script by changing the class.

    from sift_ds.hf import SiftTrainer
    trainer = SiftTrainer(model=model, args=training_args, train_dataset=train, data_collator=collator,
                          sift={"criterion": "entropy", "exit_layer": 1, "keep_ratio": 0.5})
    trainer.train()

``sift=`` takes a ``SiftConfig``, a dict (the ``"sift"`` section's keys) or None: then the ``"sift"``
section of the ds_config given as ``TrainingArguments.deepspeed`` (SIFT's defaults without one). The
section is taken out of the config before DeepSpeed sees it.

The training dataloader yields gross batches of ``per_device_train_batch_size / keep_ratio`` rows.
Each optimizer step, the gross batches of its gradient-accumulation window are selected by the
shared core (``sift_ds.selection``, at the step's parameters: they do not change within the window)
before Trainer counts ``num_items_in_batch``, so the loss normalisation, mixed precision, gradient
accumulation and the forward / backward are Trainer's own, on the kept rows. The ``sift/*``
statistics (``sift_ds.telemetry``) are summed over the logging window and the ranks, like the loss, and logged with it
(``trainer.state.log_history`` and every reporter, e.g. TensorBoard). Evaluation is Trainer's; with
SIFT on, its metrics add the early-exit fidelity probe on the first evaluation batch. The
selection is a pure function of ``(seed, global_step, micro-step, rank)`` and the parameters, and with
transformers' ``DataCollatorForLanguageModeling`` so are the training masks (``sift_ds.hf_masking``):
a run resumed from a Trainer checkpoint trains exactly what the uninterrupted run trained.

The training forward runs the MLM head on the labelled positions only (``sparse_mlm_head=True``, the
default, with SIFT on or off; ``sift_ds.mlm_head``): the loss and gradients are the dense head's, and
evaluation runs the dense forward. ``apply_sparse_mlm_head(model)`` gives a plain ``Trainer`` the same.
With ``TrainingArguments(torch_compile=True)`` the head is padded to a fixed row count (for the
collator's ``mlm_probability``) and the selection's prefix forward is compiled too (``sift_ds.compiling``).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Union

import torch
from transformers import Trainer

from .adapters import EarlyExitAdapter
from .config import SECTION, SiftConfig
from .compiling import DEFAULT_BACKEND, compile_prefix
from .config_io import load_ds_config, without_notes
from .frontend import FrontEnd, start_up_checks
from .hf_checkpoint import CriterionStateCallback, load_criterion_state
from .hf_masking import PaddingOnly, StepMasking, masks_per_step
from .hf_schedule import SelectionStart
from .mlm_head import apply_sparse_mlm_head
from .selection import Selection
from .versions import require, require_trainer_hooks
from .weighted_loss import ROW_WEIGHTS_KEY, weighted_output_loss

__all__ = ["SiftTrainer", "apply_sparse_mlm_head", "sift_config_for"]


def sift_config_for(sift: Union[SiftConfig, Mapping[str, Any], None], args) -> SiftConfig:
    """The SiftConfig from ``sift=`` or the ds_config's "sift" section, which is removed from the config
    that Trainer hands to DeepSpeed (``args.hf_deepspeed_config``); both given must agree."""
    section = None
    if getattr(args, "deepspeed", None):
        section = load_ds_config(args.deepspeed).get(SECTION)
        hf_config = getattr(args, "hf_deepspeed_config", None)
        if hf_config is not None:
            hf_config.config.pop(SECTION, None)  # the dict DeepSpeed is initialised with
            notes_gone = without_notes(hf_config.config)  # "_comment" keys: DeepSpeed's sections refuse them
            hf_config.config.clear()
            hf_config.config.update(notes_gone)
    if sift is None:
        return SiftConfig.from_dict(section)
    if isinstance(sift, Mapping):
        sift = SiftConfig.from_dict(sift)
    if not isinstance(sift, SiftConfig):
        raise TypeError(f"sift= must be a SiftConfig, a dict or None, got {type(sift).__name__}")
    if section is not None and SiftConfig.from_dict(section) != sift:
        raise ValueError("the ds_config's 'sift' section (TrainingArguments.deepspeed) disagrees with the sift= passed")
    return sift


def padded_share(args, collator) -> Optional[float]:
    """With ``torch_compile``, the masking probability the masked-positions-only head is padded for
    (static shapes, ``mlm_head.padded_row_count``): the collator's ``mlm_probability``; else None."""
    if not getattr(args, "torch_compile", False):
        return None
    share = getattr(collator, "mlm_probability", None)
    if not isinstance(share, float):
        raise ValueError(f"SiftTrainer: torch_compile pads the masked-positions-only MLM head for the collator's "
                         f"masking probability, and {type(collator).__name__} has no mlm_probability: pass "
                         "sparse_mlm_head=False, or a collator with one (DataCollatorForLanguageModeling)")
    return share


class SiftTrainer(Trainer):
    """``transformers.Trainer`` with SIFT's selection before each training micro-step (module docstring).

    ``sift``: SiftConfig, dict or None; ``adapter``: the early-exit adapter (default: detected from the
    model, ``sift_ds.detect_adapter``); ``sparse_mlm_head``: give the model (and one that ``model_init``
    makes) the masked-positions-only MLM head in training. Every other argument is Trainer's.
    """

    def __init__(self, model=None, args=None, *trainer_args, sift: Union[SiftConfig, Mapping[str, Any], None] = None,
                 adapter: Optional[EarlyExitAdapter] = None, sparse_mlm_head: bool = True, **kwargs):
        require(("torch", "transformers", "accelerate"), "SiftTrainer")  # an older Trainer would skip the selection
        require_trainer_hooks(Trainer)
        self.sift_config = sift_config_for(sift, args)
        self.sparse_mlm_head = sparse_mlm_head
        self._given_adapter = adapter
        collator = kwargs.get("data_collator", trainer_args[0] if trainer_args else None)
        self._masked_share = padded_share(args, collator) if sparse_mlm_head else None
        if sparse_mlm_head and model is not None:
            self._with_sparse_head(model)  # before Trainer inspects its forward and wraps it
        super().__init__(model, args, *trainer_args, **kwargs)
        user_scheduler = self.lr_scheduler is not None  # passed as optimizers=: its warm-up is unknown
        # Masks drawn per step (sift_ds.hf_masking) when the collator is transformers' masked-LM one.
        self.step_masking = StepMasking(self.data_collator, self.args.seed) if masks_per_step(self.data_collator) \
            else None
        cfg = self.sift_config
        # A whole number of gross rows, in Trainer's words; then the adapter's depth and the kernel.
        start_up_checks(cfg, micro_batch=self.args.per_device_train_batch_size, micro_key="per_device_train_batch_size")
        self.sift_frontend = FrontEnd(cfg, self.args.device, adapter=adapter)
        if cfg.enabled and self.model is not None:
            self.sift_frontend.adapter_for(self.model)
        self.sift_telemetry = self.sift_frontend.telemetry
        self._step_marks = None  # (start, selection done) of the step whose end is not marked yet
        self.last_selections: list = []  # the last optimizer step's selections (for inspection and tests)
        self.add_callback(CriterionStateCallback(self))  # freq_loss's running baseline in the checkpoints
        start = SelectionStart(self, cfg, user_scheduler)  # sift.selection_start_step against the LR warm-up
        if self.args.max_steps > 0:
            start.resolve(self.args.max_steps)
        self.add_callback(start)  # and again once Trainer knows max_steps, before the first step

    # ------------------------------------------------------------------ selection
    @property
    def sift_adapter(self) -> EarlyExitAdapter:
        """``adapter=`` if given, else the one detected for ``self.model`` (again if ``model_init`` replaced it);
        with ``torch_compile``, its prefix forward compiled (``sift_ds.compiling``)."""
        adapter = self.sift_frontend.adapter_for(self.model)
        if self.args.torch_compile:
            compile_prefix(adapter, self.args.torch_compile_backend or DEFAULT_BACKEND, self.args.torch_compile_mode)
        return adapter

    @property
    def gross_batch_size(self) -> int:
        """Rows per rank and micro-step that the training dataloader yields (micro-batch / keep_ratio)."""
        return self.sift_config.gross_batch_size(self._train_batch_size)

    def select(self, batch: Mapping[str, torch.Tensor], micro_step: int) -> Selection:
        """Select the kept rows of one gross batch (``sift_ds.frontend.keep_count``) at the current
        optimizer step (``state.global_step``) and ``micro_step`` within it; its ``sift/*`` pairs go to
        ``sift_telemetry``."""
        self.sift_adapter  # noqa: B018 - resolved (and compiled) for this model
        return self.sift_frontend.select(batch, self.state.global_step, micro_step, model=self.model)

    def sift_probe(self, batch: Mapping[str, torch.Tensor]) -> Dict[str, float]:
        """The early-exit fidelity probe on ``batch`` (``sift_ds.probe``): ``probe/spearman`` and
        ``probe/top_half_overlap``; a collective when a process group exists."""
        return self.sift_frontend.probe(batch, model=self.model)

    # ------------------------------------------------------------------ Trainer hooks
    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """Trainer's ``train``; a resumed run first restores the criterion state (``hf_checkpoint``)."""
        load_criterion_state(self, resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def call_model_init(self, trial=None):
        """Trainer's ``model_init`` call, the model it makes with the sparse head (``sparse_mlm_head``)."""
        model = super().call_model_init(trial)
        return self._with_sparse_head(model) if self.sparse_mlm_head else model

    def _with_sparse_head(self, model):
        """``apply_sparse_mlm_head(model)``; for a model of a family without a built-in adapter, a
        TypeError that says what to pass."""
        try:
            return apply_sparse_mlm_head(model, self._masked_share)
        except TypeError:
            name = f"{type(model).__name__} (model_type {getattr(getattr(model, 'config', None), 'model_type', None)!r})"
            early_exit = "adapter= serves the early exit only" if self._given_adapter is not None else \
                "and adapter= an object implementing sift_ds.EarlyExitAdapter for the early exit"
            raise TypeError(f"SiftTrainer: {name} has no built-in adapter, and sparse_mlm_head=True (the default) "
                            f"needs one for the masked-positions-only MLM head: pass sparse_mlm_head=False "
                            f"({early_exit}), or register the family with an adapter that has an output_head "
                            f"(sift_ds.registry.register_family)") from None

    def get_train_dataloader(self):
        """Trainer's training dataloader with gross batches, left on the host: the selection finds the
        labelled positions on the host copy (no device sync) and moves the batch itself. With
        ``step_masking``, the dataloader pads and ``get_batch_samples`` masks."""
        micro, placement, collator = self._train_batch_size, self.accelerator.device_placement, self.data_collator
        self._train_batch_size, self.accelerator.device_placement = self.gross_batch_size, False
        if self.step_masking is not None:
            self.data_collator = PaddingOnly(collator)
        try:
            return super().get_train_dataloader()
        finally:
            self._train_batch_size, self.accelerator.device_placement, self.data_collator = micro, placement, collator

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        """The step's gross batches, each replaced by its kept rows before Trainer counts the items."""
        timer = self.sift_telemetry.timer
        self._mark_step_end()
        start = timer.now()
        self.last_selections = []
        for micro_step in range(num_batches):
            try:
                gross = next(epoch_iterator)
            except StopIteration:
                break
            if self.step_masking is not None:
                gross = self.step_masking(gross, self.state.global_step, micro_step, self.args.process_index)
            self.last_selections.append(self.select(gross, micro_step))
        self._step_marks = (start, timer.now(), len(self.last_selections))
        kept = [sel.batch if sel.weights is None else {**sel.batch, ROW_WEIGHTS_KEY: sel.weights}
                for sel in self.last_selections]
        return super().get_batch_samples(iter(kept), len(kept), device)

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        """Trainer's loss; rows drawn by importance sampling (``Selection.weights``) weight their tokens'
        losses, with the model's own normalisation (``num_items_in_batch`` when the model takes it)."""
        weights = inputs.pop(ROW_WEIGHTS_KEY, None)
        if weights is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        batch = dict(inputs)  # Trainer may pop the labels
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        items = num_items_in_batch if self.model_accepts_loss_kwargs else None
        weighted = weighted_output_loss(outputs, batch, weights, num_items=items)
        # Trainer's own scaling of the model's loss (token averaging across devices), applied alike.
        weighted = weighted * (loss.detach() / outputs["loss"].detach().clamp_min(1e-30))
        return (weighted, outputs) if return_outputs else weighted

    def log(self, logs: Dict[str, float], start_time: Optional[float] = None) -> None:
        """Training logs (those with ``loss``) also carry the window's ``sift/*`` means over all ranks."""
        if "loss" in logs and self.sift_telemetry.pairs:
            self._mark_step_end()
            logs.update(self.sift_telemetry.read())  # the window, pooled over its micro-steps and all ranks
        super().log(logs, start_time)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix: str = "eval"):
        """Trainer's evaluation loop; with SIFT on, its metrics also carry the fidelity probe
        (``sift_probe``) on the loop's first batch, e.g. ``eval_probe/spearman``, which Trainer logs
        to every reporter with the evaluation loss (a collective: every rank runs the loop)."""
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        first = next(iter(dataloader), None) if self.sift_config.enabled else None
        if isinstance(first, Mapping) and self.sift_frontend.labels_key in first:
            output.metrics.update({f"{metric_key_prefix}_{k}": v for k, v in self.sift_probe(first).items()})
        return output

    def _mark_step_end(self) -> None:
        if self._step_marks is not None:
            start, selected, selections = self._step_marks
            self.sift_telemetry.add_step(start, selected, self.sift_telemetry.timer.now(), selections)
            self._step_marks = None
