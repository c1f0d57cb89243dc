"""Readers of what the experiment trackers wrote, each as ``{tag: [(step, value), ...]}`` in the order
written: TensorBoard event files (tensorboard's EventAccumulator), DeepSpeed's CSV monitor files, a
wandb offline run's ``.wandb`` file (wandb's own protobuf records) and a Comet offline archive."""
import csv
import glob
import json
import math
import os
import zipfile

WANDB_BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of [crc32, length, type] records
WANDB_HEADER = 7  # ":W&B", magic, version
FULL, LAST = 1, 4


def tensorboard_scalars(log_dir) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = {}
    for folder in sorted({os.path.dirname(p) for p in glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"),
                                                                   recursive=True)}):
        events = EventAccumulator(folder)
        events.Reload()
        for tag in events.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
    return scalars


def csv_scalars(folder) -> dict:
    """DeepSpeed's CSV monitor: one file per tag (``/`` written as ``_``), a header row, then step, value."""
    scalars = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.csv"))):
        with open(path, newline="") as f:
            rows = list(csv.reader(f))[1:]
        scalars[os.path.basename(path)[:-4]] = [(int(step), float(value)) for step, value in rows]
    return scalars


def _wandb_records(path):
    from wandb.proto.wandb_internal_pb2 import Record

    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    pos, pending = WANDB_HEADER, b""
    while pos + 7 <= len(data):
        left = WANDB_BLOCK - pos % WANDB_BLOCK
        if left < 7:  # a block's tail too short for a record header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, LAST):
            record = Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_history(wandb_dir) -> dict:
    """The history of the one offline run under ``wandb_dir`` (its ``_step`` as the step)."""
    runs = glob.glob(os.path.join(wandb_dir, "**", "offline-run-*", "run-*.wandb"), recursive=True)
    assert len(runs) == 1, runs
    history = {}
    for record in _wandb_records(runs[0]):
        if record.WhichOneof("record_type") != "history":
            continue
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            history.setdefault(key, []).append((record.history.step.num, json.loads(item.value_json)))
    return history


def comet_metrics(offline_dir) -> dict:
    """The metrics of the one Comet offline archive in ``offline_dir`` (each (step, value) once)."""
    archives = glob.glob(os.path.join(offline_dir, "*.zip"))
    assert len(archives) == 1, archives
    metrics = {}
    with zipfile.ZipFile(archives[0]) as archive:
        for line in archive.read("messages.json").decode().splitlines():
            message = json.loads(line)
            if message["type"] == "metric_msg":
                metric = message["payload"]["metric"]
                point = (metric["step"], float(metric["metricValue"]))
                points = metrics.setdefault(metric["metricName"], [])
                if repr(point) not in map(repr, points):  # logged again with the epoch: once (NaN included)
                    points.append(point)
    return metrics


def same(got, want, rel=1e-6) -> bool:
    """Two lists of (step, value): the same steps, values equal to ``rel`` (NaN equal to NaN)."""
    if [s for s, _ in got] != [s for s, _ in want]:
        return False
    return all((math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)
               for (_, a), (_, b) in zip(got, want))
