"""``run_pretrain``: Megatron-LM's ``pretrain`` with SIFT's two wrappers, called in the form that the
installed Megatron-LM takes.

Megatron-LM has had two entry points:

* up to core_v0.17: ``pretrain(datasets_provider, model_provider, model_type, forward_step_func, ...,
  extra_args_provider=..., args_defaults=...)`` parses the command line itself;
* from core_v0.18: the script parses first, ``args = parse_and_validate_args(extra_args_provider,
  args_defaults=...)`` (which also sets Megatron's global args), builds a config container,
  ``pretrain_cfg_container_from_args(args, model_cfg)``, and passes it first:
  ``pretrain(cfg_container, datasets_provider, ...)``. core_v0.18 keeps ``model_provider`` third;
  core_v0.19 moves it behind ``forward_step_func`` and makes it optional (the container's model
  config can build the model instead), so the call here names every argument.

The form is read from ``pretrain``'s signature (its first parameter), not from a version number.
"""
from __future__ import annotations

import inspect
from typing import Callable, Optional

from .arguments import add_arguments

CONTAINER_PARAMETER = "cfg_container"  # the first parameter of pretrain from core_v0.18 on


def takes_config_container(pretrain: Callable) -> bool:
    """Whether ``pretrain`` is the core_v0.18+ entry point (a config container first)."""
    params = list(inspect.signature(pretrain).parameters)
    return bool(params) and params[0] == CONTAINER_PARAMETER


def with_sift_arguments(extra_args_provider: Optional[Callable]) -> Callable:
    """``extra_args_provider`` (the script's own, or None) followed by the ``--sift-*`` flags."""
    if extra_args_provider is None:
        return add_arguments
    return lambda parser: add_arguments(extra_args_provider(parser))


def run_pretrain(sift, datasets_provider: Callable, model_provider: Optional[Callable], model_type,
                 forward_step: Callable, *, extra_args_provider: Optional[Callable] = None,
                 args_defaults: Optional[dict] = None, model_config: Optional[Callable] = None,
                 pretrain: Optional[Callable] = None, **kwargs):
    """Call Megatron-LM's ``pretrain`` with ``sift.datasets_provider(datasets_provider)`` and
    ``sift.forward_step(forward_step)``, the ``--sift-*`` flags added to its command line.

    ``model_config``: from core_v0.18, an optional ``args -> model config`` (e.g. Megatron-LM's
    ``gpt_config_from_args``) for ``pretrain_cfg_container_from_args``; core_v0.19 then builds the
    model from it and ``model_provider`` may be None. ``pretrain``: the function to call (default
    ``megatron.training.pretrain``; pass the one ``inprocess_restart`` wrapped). Other keyword
    arguments (``store``, ``get_embedding_ranks``, ...) are passed on.
    """
    if pretrain is None:
        from megatron.training import pretrain
    extra = with_sift_arguments(extra_args_provider)
    datasets_provider, forward_step = sift.datasets_provider(datasets_provider), sift.forward_step(forward_step)
    if not takes_config_container(pretrain):
        if model_provider is None or model_config is not None:
            raise ValueError("this Megatron-LM's pretrain (before core_v0.18) needs model_provider and takes no "
                             "model_config")
        return pretrain(datasets_provider, model_provider, model_type, forward_step, extra_args_provider=extra,
                        args_defaults=args_defaults or {}, **kwargs)
    from megatron.training.argument_utils import pretrain_cfg_container_from_args
    from megatron.training.arguments import parse_and_validate_args

    args = parse_and_validate_args(extra_args_provider=extra, args_defaults=args_defaults or {})
    container = pretrain_cfg_container_from_args(args, model_config(args) if model_config is not None else None)
    if model_provider is not None:
        kwargs["model_provider"] = model_provider
    return pretrain(container, train_valid_test_dataset_provider=datasets_provider, model_type=model_type,
                    forward_step_func=forward_step, **kwargs)
