"""The settings of asynchronous convergence: one ``TaskSpec`` per task that may converge and be
distilled, in an ``AsyncConvergenceConfig``. ``from_dict`` reads the JSON form; ``check`` validates it
against the tasks a model has and the metrics its evaluation produces. Every error is one line that
names the key (``tasks.<task>.<field>``)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Tuple

SECTION = "async_convergence"
TEACHERS = ("frozen", "cached")
MODES = ("max", "min")


class AsyncConvergenceError(ValueError):
    """A bad setting, told in one line naming its key."""


@dataclass(frozen=True)
class TaskSpec:
    """How one task is watched and, once converged, distilled.

    ``metric`` (on the task's validation split) converges once ``patience`` evaluations in a row fail
    to improve on the best value by more than ``min_delta`` (``mode`` "max": larger is better, "min":
    smaller). From then on the task's loss is ``kd_weight`` times the KL divergence to the teacher (the
    model's outputs for the task at its best evaluation) at ``temperature``, scaled by T^2; with
    ``blend_steps`` > 0 the KD share grows linearly from 1/blend_steps to 1 over that many steps, the
    rest being the task's own loss on its labels. ``loss_weight`` scales the task's loss in the sum."""
    name: str
    metric: str = "accuracy"
    mode: str = "max"
    patience: int = 3
    min_delta: float = 0.0
    temperature: float = 2.0
    kd_weight: float = 1.0
    blend_steps: int = 0
    loss_weight: float = 1.0


@dataclass(frozen=True)
class AsyncConvergenceConfig:
    """The watched tasks and where the teacher's outputs come from: ``teacher`` "frozen" (a frozen copy
    of the model at the task's best evaluation runs beside the training forward) or "cached" (that copy
    runs once over the training set at convergence; its logits are kept and looked up by the example
    index in ``index_key``)."""
    tasks: Tuple[TaskSpec, ...] = field(default_factory=tuple)
    teacher: str = "frozen"
    index_key: str = "example_index"

    def task(self, name: str) -> TaskSpec:
        return next(t for t in self.tasks if t.name == name)

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    def check(self, task_names: Iterable[str], metrics: Mapping[str, Iterable[str]]) -> "AsyncConvergenceConfig":
        """Refuse a task the model does not have and a metric its evaluation does not produce
        (``metrics``: task -> the metric names evaluated for it). Returns self."""
        known = list(task_names)
        for spec in self.tasks:
            if spec.name not in known:
                raise AsyncConvergenceError(f"{SECTION}: tasks.{spec.name}: unknown task {spec.name!r} "
                                            f"(the model's tasks: {', '.join(known)})")
            produced = sorted(metrics.get(spec.name, ()))
            if spec.metric not in produced:
                raise AsyncConvergenceError(f"{SECTION}: tasks.{spec.name}.metric: the evaluation does not produce "
                                            f"{spec.metric!r} for {spec.name!r} (it produces: {', '.join(produced)})")
        return self


def _number(where: str, value: Any, kind: type, low: float, strict: bool = False, section: str = SECTION) -> Any:
    ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok_type = isinstance(value, int) and not isinstance(value, bool)
    if not ok_type or not math.isfinite(value):
        raise AsyncConvergenceError(f"{section}: {where} must be {'an integer' if kind is int else 'a number'}, "
                                    f"got {value!r}")
    if value < low or (strict and value == low):
        raise AsyncConvergenceError(f"{section}: {where} must be {'>' if strict else '>='} {low}, got {value!r}")
    return value


def _task(name: str, values: Mapping[str, Any]) -> TaskSpec:
    if not isinstance(values, Mapping):
        raise AsyncConvergenceError(f"{SECTION}: tasks.{name} must be an object of settings, got {values!r}")
    fields = {f.name for f in dataclasses.fields(TaskSpec)} - {"name"}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise AsyncConvergenceError(f"{SECTION}: tasks.{name}.{unknown[0]}: unknown key (known: {', '.join(sorted(fields))})")
    spec = TaskSpec(name=name, **values)
    where = f"tasks.{name}"
    if not isinstance(spec.metric, str) or not spec.metric:
        raise AsyncConvergenceError(f"{SECTION}: {where}.metric must be a metric name, got {spec.metric!r}")
    if spec.mode not in MODES:
        raise AsyncConvergenceError(f"{SECTION}: {where}.mode must be 'max' or 'min', got {spec.mode!r}")
    _number(f"{where}.patience", spec.patience, int, 1)
    _number(f"{where}.min_delta", spec.min_delta, float, 0)
    _number(f"{where}.temperature", spec.temperature, float, 0, strict=True)
    _number(f"{where}.kd_weight", spec.kd_weight, float, 0)
    _number(f"{where}.blend_steps", spec.blend_steps, int, 0)
    _number(f"{where}.loss_weight", spec.loss_weight, float, 0)
    return spec


def from_dict(values: Any) -> AsyncConvergenceConfig:
    """``{"teacher": "frozen", "index_key": ..., "tasks": {"<task>": {<TaskSpec field>: value}}}``;
    an ``AsyncConvergenceConfig`` passes through."""
    if isinstance(values, AsyncConvergenceConfig):
        return values
    if not isinstance(values, Mapping):
        raise AsyncConvergenceError(f"{SECTION} must be an object, got {values!r}")
    unknown = sorted(set(values) - {"tasks", "teacher", "index_key"})
    if unknown:
        raise AsyncConvergenceError(f"{SECTION}: {unknown[0]}: unknown key (known: index_key, tasks, teacher)")
    tasks = values.get("tasks", {})
    if not isinstance(tasks, Mapping) or not tasks:
        raise AsyncConvergenceError(f"{SECTION}: tasks must name at least one task, got {tasks!r}")
    teacher = values.get("teacher", "frozen")
    if teacher not in TEACHERS:
        raise AsyncConvergenceError(f"{SECTION}: teacher must be 'frozen' or 'cached', got {teacher!r}")
    index_key = values.get("index_key", "example_index")
    if not isinstance(index_key, str) or not index_key:
        raise AsyncConvergenceError(f"{SECTION}: index_key must be a column name, got {index_key!r}")
    return AsyncConvergenceConfig(tuple(_task(n, v) for n, v in tasks.items()), teacher, index_key)
