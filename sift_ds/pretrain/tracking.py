"""Experiment tracking through DeepSpeed's monitor: the ds_config's ``tensorboard``, ``csv_monitor``,
``wandb`` and ``comet`` sections, as DeepSpeed takes them, and the job's records as monitor events.

TensorBoard and CSV write files under ``output_path/job_name``; an "auto" (or empty) ``output_path``
is the run's output directory. wandb and Comet take no path in their sections: their local files
(wandb's run folder, Comet's offline archives) go under the output directory too, unless
``WANDB_DIR`` / ``COMET_OFFLINE_DIRECTORY`` say where.

DeepSpeed's own events (``Train/Samples/*``) count samples on their x axis. The job's records
(``Pretrain/*``) count optimizer steps on TensorBoard and in the CSV files; wandb keeps one step
counter per run, which must not go back, and Comet's ``samples_log_interval`` counts samples, so
those two get the records at the samples trained so far, with ``Pretrain/step`` among them.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Dict, List, Tuple

from .ds_policy import enabled

FILE_MONITORS = {"tensorboard": "tensorboard", "csv_monitor": "csv"}  # section -> folder under output_dir
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "comet": "comet_ml"}  # section -> module it needs
PIP_NAMES = {"comet_ml": "comet-ml"}
ENVIRONMENT = {"wandb": ("WANDB_DIR", ""), "comet": ("COMET_OFFLINE_DIRECTORY", "comet")}  # section -> (variable, folder)
SAMPLE_AXIS = ("wandb_monitor", "comet_monitor")  # DeepSpeed's MonitorMaster attributes whose x axis is samples
STEP_AXIS = ("tb_monitor", "csv_monitor")


def resolve_monitors(ds_config: dict, output_dir: str, job_name: str) -> None:
    """TensorBoard / CSV sections with an "auto" or empty output_path write under output_dir, in a
    folder named job_name unless the section names one (edited in place); wandb and Comet sections
    are left as written. An enabled monitor whose package is missing: ValueError naming it."""
    for key, folder in FILE_MONITORS.items():
        if not enabled(ds_config, key):
            continue
        section = ds_config[key]
        if section.get("output_path") in (None, "", "auto"):
            section["output_path"] = os.path.join(output_dir, folder)
        section.setdefault("job_name", job_name)
    for key, module in PACKAGES.items():
        if enabled(ds_config, key) and importlib.util.find_spec(module) is None:
            raise ValueError(f"ds_config {key}.enabled needs the {module} package "
                             f"(pip install {PIP_NAMES.get(module, module)}) or set it to false")


def local_directories(ds_config: dict, output_dir: str) -> Dict[str, str]:
    """Where the enabled wandb / Comet monitors keep their local files: an environment variable the
    user did not set, to its folder under output_dir (set in ``os.environ`` and returned)."""
    chosen = {}
    for key, (variable, folder) in ENVIRONMENT.items():
        if enabled(ds_config, key) and not os.environ.get(variable):
            chosen[variable] = os.path.join(output_dir, folder) if folder else output_dir
            os.makedirs(chosen[variable], exist_ok=True)
    os.environ.update(chosen)
    return chosen


def record_events(record: Dict[str, Any], prefix: str = "Pretrain/") -> List[Tuple[str, float]]:
    """The numeric fields of a record (bools and None left out), as (tag, value)."""
    return [(prefix + k, float(v)) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"]


def write_record(monitor, record: Dict[str, Any]) -> None:
    """One record to each monitor DeepSpeed's ``MonitorMaster`` started: at ``record["step"]`` on the
    step-axis monitors, at ``record["samples"]`` (with ``Pretrain/step``) on the sample-axis ones."""
    events = record_events(record)
    step = int(record["step"])
    samples = int(record.get("samples", step))
    for name in STEP_AXIS:
        target = getattr(monitor, name, None)
        if target is not None:
            target.write_events([(tag, value, step) for tag, value in events])
    for name in SAMPLE_AXIS:
        target = getattr(monitor, name, None)
        if target is not None:
            target.write_events([(tag, value, samples) for tag, value in [("Pretrain/step", float(step)), *events]])
