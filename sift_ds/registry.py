"""The one registry of model families: each adapter class declares, where it lives, what it serves.

    @register_family(ENCODER, model_types=("roberta", "xlm-roberta"), positions_after_padding=True,
                     presets={"tiny_roberta": ("roberta", dict(hidden_size=64, ...))})
    class RobertaAdapter(EncoderAdapter): ...

A ``Family`` carries the Hugging Face ``model_type`` keys it serves, the megatron-core model class
(``megatron_model``), whether it is a masked (``ENCODER``) or a causal (``CAUSAL``) LM, whether its
position ids start after the padding id (RoBERTa's convention), and debug-size presets (name ->
``(model_type, config fields)``) for tests and the pretraining job's ``--model``. Adding a family is
one module: the decorated adapter class, imported before the model is resolved (a module outside
this package works the same way). ``resolve`` finds the family of a model: by ``config.model_type``,
then by the class of the module inside any ``.module`` wrappers (DDP, Float16Module, a DeepSpeed engine).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, Mapping, Optional, Tuple

from torch import nn

ENCODER = "encoder"  # a masked LM: position i is scored against labels[:, i]
CAUSAL = "causal"  # a next-token LM
KINDS = (ENCODER, CAUSAL)


@dataclass(frozen=True)
class Family:
    """One registered family: its adapter class (called with the model) and what it serves."""

    adapter: Callable[[nn.Module], object]
    kind: str
    model_types: Tuple[str, ...] = ()
    megatron_model: Optional[type] = None
    positions_after_padding: bool = False
    presets: Mapping[str, Tuple[str, dict]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return getattr(self.adapter, "__name__", repr(self.adapter))


_FAMILIES: Dict[object, Family] = {}  # adapter class -> its family, in registration order


def register_family(kind: str, model_types: Tuple[str, ...] = (), megatron_model: Optional[type] = None,
                    positions_after_padding: bool = False, presets: Optional[Mapping[str, Tuple[str, dict]]] = None):
    """Class decorator: register the adapter class as a family (see the module docstring). A
    ``model_type``, megatron-core class or preset name that another family already claims is refused."""
    if kind not in KINDS:
        raise ValueError(f"a family's kind must be one of {list(KINDS)}, got {kind!r}")

    def register(adapter):
        family = Family(adapter, kind, tuple(model_types), megatron_model, positions_after_padding, dict(presets or {}))
        for other in _FAMILIES.values():
            if other.adapter is adapter:
                continue
            for what, mine, theirs in (("model_type", family.model_types, other.model_types),
                                       ("preset", family.presets, other.presets)):
                clash = sorted(set(mine) & set(theirs))
                if clash:
                    raise ValueError(f"{family.name} registers {what} {clash[0]!r}, which {other.name} already serves")
            if megatron_model is not None and other.megatron_model is megatron_model:
                raise ValueError(f"{family.name} registers {megatron_model.__name__}, which {other.name} already serves")
        _FAMILIES[adapter] = family
        adapter.registration = family
        return adapter

    return register


def unregister_family(adapter) -> None:
    """Remove the family of ``adapter`` (a family registered for a test, say)."""
    _FAMILIES.pop(adapter, None)


def families() -> Iterator[Family]:
    """Every registered family, in registration order."""
    return iter(list(_FAMILIES.values()))


def by_model_type(model_type: Optional[str]) -> Optional[Family]:
    """The family serving the Hugging Face ``model_type`` (None when none does)."""
    return next((f for f in families() if model_type in f.model_types), None)


def model_types() -> Dict[str, Callable[[nn.Module], object]]:
    """Every registered ``model_type`` -> its adapter class."""
    return {key: f.adapter for f in families() for key in f.model_types}


def is_causal(model_type: Optional[str]) -> bool:
    """Whether ``model_type`` is served by a causal-LM family."""
    family = by_model_type(model_type)
    return family is not None and family.kind == CAUSAL


def preset(name: str) -> Optional[Tuple[str, dict]]:
    """The ``(model_type, config fields)`` of a family's debug-size preset (None when no family has it)."""
    return next((f.presets[name] for f in families() if name in f.presets), None)


def presets(kind: str) -> Dict[str, Tuple[str, dict]]:
    """Every preset of the families of ``kind``."""
    return {name: spec for f in families() if f.kind == kind for name, spec in f.presets.items()}


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside Megatron's DDP / Float16Module wrappers or a DeepSpeed engine (``.module``)."""
    seen = 0
    while hasattr(model, "module") and isinstance(getattr(model, "module"), nn.Module) and seen < 8:
        model, seen = model.module, seen + 1
    return model


def resolve(model: nn.Module) -> Optional[Family]:
    """The family of ``model``: by its ``config.model_type``, else by the class of the module inside
    its wrappers (a megatron-core model); None when no family serves it."""
    family = by_model_type(getattr(getattr(model, "config", None), "model_type", None))
    if family is not None:
        return family
    inner = unwrap_model(model)
    return next((f for f in families() if f.megatron_model is not None and isinstance(inner, f.megatron_model)), None)


def served() -> str:
    """What the registered families serve, for error messages: model types, then megatron-core classes."""
    keys = [*model_types(), *(f.megatron_model.__name__ for f in families() if f.megatron_model is not None)]
    return ", ".join(keys)
