"""The masked-positions-only MLM head: the training forward hands the MLM head (transform, then the
tied decoder and its bias) only the hidden states of the labelled positions (about 15% of them), and
the model's own loss scores those rows, as MosaicBERT does. Loss and gradients are the dense head's;
the head's FLOPs and the ``[B, S, V]`` logits of the other positions are not spent.

    from sift_ds.hf import apply_sparse_mlm_head
    model = apply_sparse_mlm_head(AutoModelForMaskedLM.from_config(config))

How: for the duration of one forward, a pre-hook on the module the model hands its final hidden
states to (the adapter's ``output_head``) replaces them by their labelled rows, and the model gets
the labels of those rows only, so that everything after the gather, the cross-entropy and its
reduction included, is the model's own code. ``sift_ds.megatron.apply_sparse_mlm_head`` does the
same for megatron-core's ``BertModel`` with these helpers.

What the patched model returns in training (``model.training`` and ``labels`` given): ``loss`` as the
dense model's, and ``logits`` of shape ``[N, V]``, row ``i`` for the ``i``-th labelled position in
row-major order (``labels[labels != -100][i]``). In eval mode, or without labels, the forward is the
dense one: evaluation loss, logits and metrics are exactly the dense model's.

For ``torch.compile`` the number of rows must not change from batch to batch:
``apply_sparse_mlm_head(model, masked_share=0.15)`` gathers a fixed number of rows per batch shape
(``padded_row_count``: enough for that masked share with a wide margin), the labelled positions
first, then unlabelled ones as padding whose label is the ignore index, so the loss and gradients are
unchanged. No host sync, no data-dependent shape: the training forward compiles to one graph.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import math
import types
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from .adapters import detect_adapter
from .kernels import IGNORE_INDEX

PATCH_FLAG = "sift_sparse_mlm_head"  # set on a patched forward


def labelled_row_indices(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX, sequence_major: bool = False):
    """Flat indices of the labelled positions of ``labels`` [B, S] in the order of the hidden states'
    rows: ``[B*S]`` row-major, or ``[S*B]`` for sequence-major hidden states ``[S, B, H]`` (Megatron)."""
    flat = (labels.t() if sequence_major else labels).reshape(-1)
    return torch.nonzero(flat != ignore_index, as_tuple=False).squeeze(1)


@contextlib.contextmanager
def gathering_rows(module: nn.Module, positions: torch.Tensor, shape: torch.Size, keyword: Optional[str] = None,
                   sequence_major: bool = False) -> Iterator[None]:
    """While open, ``module``'s hidden-state argument (its first positional one, or ``keyword``) of
    shape ``shape + [H]`` is replaced by its rows at ``positions``: ``[N, H]``, or ``[N, 1, H]`` for a
    sequence-major model (a sequence of N positions, batch 1)."""

    def hook(_module, args, kwargs):
        hidden = kwargs[keyword] if keyword is not None else args[0]
        if tuple(hidden.shape[:-1]) != tuple(shape):
            raise ValueError(f"the masked-positions-only MLM head expected hidden states of shape {tuple(shape)} + "
                             f"[H] at {type(_module).__name__}, got {tuple(hidden.shape)}")
        rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions.to(hidden.device))
        if sequence_major:
            rows = rows.unsqueeze(1)
        if keyword is not None:
            return args, {**kwargs, keyword: rows}
        return (rows, *args[1:]), kwargs

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def output_head(model: nn.Module) -> nn.Module:
    """The module that ``model``'s forward hands its final hidden states [B, S, H] to: its built-in
    adapter's ``output_head``. TypeError for a model without one (no masked-LM head of a built-in family)."""
    adapter = detect_adapter(model)
    head = getattr(adapter, "output_head", None)
    if head is None:
        raise TypeError(f"the masked-positions-only MLM head needs a masked LM of a built-in family, got "
                        f"{type(model).__name__} (model_type {getattr(model.config, 'model_type', None)!r})")
    return head


def is_patched(model: nn.Module) -> bool:
    """Whether ``model``'s forward is a masked-positions-only one (``install_forward``)."""
    return getattr(vars(model).get("forward"), PATCH_FLAG, False)


def install_forward(model: nn.Module, sparse: Callable, labels_name: str = "labels") -> nn.Module:
    """Replace ``model``'s forward, in place, by one that in training with labels calls
    ``sparse(model, labels, run)``, where ``run(new_labels)`` is the class's forward on the same
    arguments with ``labels_name`` replaced; otherwise the class's forward. Idempotent."""
    if is_patched(model):
        return model
    dense = type(model).forward
    signature = inspect.signature(dense)

    def forward(model, *args, **kwargs):  # a function, not a partial: torch.compile(model) looks up its source file
        return _forward(dense, signature, sparse, labels_name, model, *args, **kwargs)

    functools.update_wrapper(forward, dense)
    setattr(forward, PATCH_FLAG, True)
    # A bound method: copy.deepcopy binds it to the copy, and accelerate's autocast wrapping (which
    # rebinds ``forward.__func__``) keeps it; the signature (``__wrapped__``) stays the class's, so
    # Trainer passes the loss arguments it would pass to the dense model.
    model.forward = types.MethodType(forward, model)
    return model


def _forward(dense, signature: inspect.Signature, sparse: Callable, labels_name: str, model: nn.Module, *args,
             **kwargs):
    if labels_name in kwargs:  # how Trainer and the pretraining job pass them (no binding: torch.compile traces this)
        labels = kwargs[labels_name]
        if labels is None or not model.training:
            return dense(model, *args, **kwargs)
        return sparse(model, labels, lambda new_labels: dense(model, *args, **{**kwargs, labels_name: new_labels}))
    bound = signature.bind(model, *args, **kwargs)
    labels = bound.arguments.get(labels_name)
    if labels is None or not model.training:
        return dense(model, *args, **kwargs)

    def run(new_labels):
        bound.arguments[labels_name] = new_labels
        return dense(*bound.args, **bound.kwargs)

    return sparse(model, labels, run)


def apply_sparse_mlm_head(model: nn.Module, masked_share: Optional[float] = None) -> nn.Module:
    """Give ``model`` (a masked LM of any built-in family: BERT, RoBERTa, XLM-RoBERTa, ELECTRA generator,
    DistilBERT, ModernBERT, DeBERTa-v2; ``BertForPreTraining`` too) the masked-positions-only head in
    training, in place, and return it (module docstring). Weights, state dict, ``save_pretrained``
    and the evaluation forward are unchanged; calling it again does nothing. A ModernBERT whose
    config already asks for ``sparse_prediction`` is left as it is (it gathers the rows itself).

    ``masked_share`` (the collator's masking probability): the padded head for ``torch.compile``, a
    fixed number of rows per batch shape (``padded_row_count``); None: exactly the labelled rows."""
    if getattr(model, "sparse_prediction", False):
        return model
    head = output_head(model)  # a TypeError now, not at the first step
    if masked_share is None or is_patched(model):
        return install_forward(model, _hf_sparse)
    if not 0.0 < masked_share <= 1.0:
        raise ValueError(f"masked_share must be in (0, 1], got {masked_share}")
    rows = PaddedRows(masked_share)
    head.register_forward_pre_hook(rows, with_kwargs=True)
    model.sift_padded_rows = rows  # deepcopy copies it with the hook: one object in the copy too
    return install_forward(model, _hf_padded)


def _hf_sparse(model: nn.Module, labels: torch.Tensor, run: Callable):
    positions = labelled_row_indices(labels)
    with gathering_rows(output_head(model), positions, labels.shape):
        return run(labels.reshape(-1).index_select(0, positions))


# The padded head leaves room for the binomial mean of the masked positions plus this many standard
# deviations (a larger count is refused, never truncated), rounded up to a multiple of ROW_MULTIPLE.
PADDING_SIGMAS = 7.0
ROW_MULTIPLE = 8


def padded_row_count(positions: int, masked_share: float) -> int:
    """Rows the padded head gathers from a batch of ``positions`` token positions whose masks are drawn
    independently with probability ``masked_share`` (``PADDING_SIGMAS``), at most ``positions``."""
    mean = positions * masked_share
    spread = PADDING_SIGMAS * math.sqrt(positions * masked_share * (1.0 - masked_share))
    return min(positions, ROW_MULTIPLE * math.ceil((mean + spread) / ROW_MULTIPLE))


def padded_positions(labels: torch.Tensor, count: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``count`` flat ``[B*S]`` indices: the labelled positions of ``labels`` in row-major order, then
    unlabelled ones as padding (a fixed shape, no host sync). A batch with more than ``count`` labelled
    positions fails (a device-side assertion) instead of losing rows."""
    unlabelled = labels.reshape(-1) == ignore_index
    torch._assert_async((~unlabelled).sum() <= count, "the padded masked-positions-only MLM head: a batch has more "
                        "labelled positions than its rows (is masked_share the collator's masking probability?)")
    return torch.sort(unlabelled.to(torch.uint8), stable=True).indices[:count]


class PaddedRows:
    """The padded head's forward pre-hook on the model's output head, installed once: while
    ``positions`` is set (one training forward), the head gets the hidden states' rows at them."""

    def __init__(self, masked_share: float):
        self.masked_share = masked_share
        self.positions: Optional[torch.Tensor] = None

    def __call__(self, _module, args, kwargs):
        if self.positions is None:
            return None
        hidden = args[0]
        return (hidden.reshape(-1, hidden.shape[-1]).index_select(0, self.positions), *args[1:]), kwargs


def _hf_padded(model: nn.Module, labels: torch.Tensor, run: Callable):
    rows = model.sift_padded_rows
    rows.positions = padded_positions(labels, padded_row_count(labels.numel(), rows.masked_share))
    try:
        return run(labels.reshape(-1).index_select(0, rows.positions))
    finally:
        rows.positions = None
