"""Resume that survives its own debris, and the non-finite-loss guard, with real runs (one process,
a world of one, to keep them short) sharing one run A stopped at step 4 of 6: copies of its output
directory are damaged and resumed.

* run identity: run.json, the run id in every manifest and every metrics.jsonl record;
* a torn last line of metrics.jsonl and a corrupt newest checkpoint: the resume drops the line,
  falls back to the newest intact checkpoint, says both, and finishes with the full metrics;
* NaN weights loaded on purpose (``--trust_checkpoint`` over a failed digest): the run stops at
  the first non-finite loss, exit status 2, no checkpoint after it, no exported model.
"""
import json
import shutil

import pytest
import torch

from launch_helpers import metrics, run_python, small_config
from sift_ds.pretrain import checkpoint
from sift_ds.pretrain.identity import read_identity
from sift_ds.pretrain.manifest import read_manifest

STEPS, STOP = 6, 4


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run_a")
    config = small_config(tmp, base="tiny_cpu_vanilla.json", max_steps=STEPS, save_interval=2)
    out = tmp / "a"
    proc = run_python(["--ds_config", config, "--output_dir", out, "--exit_interval", STOP], timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return config, out


def copy_of(run_a, tmp_path, name):
    copy = tmp_path / name
    shutil.copytree(run_a[1], copy)
    return copy


def test_the_run_id_is_in_run_json_every_manifest_and_every_record(run_a):
    _, out = run_a
    run_id = read_identity(str(out)).run_id
    assert run_id and [r["step"] for r in metrics(out)] == list(range(1, STOP + 1))
    assert {r["run_id"] for r in metrics(out)} == {run_id}
    for step in (2, 4):
        assert read_manifest(str(out / "checkpoints" / f"global_step{step}"))["run"]["run_id"] == run_id
    assert (out / "checkpoints" / "latest").read_text() == f"global_step{STOP}"


def test_a_torn_metrics_line_and_a_corrupt_newest_checkpoint_do_not_block_the_resume(run_a, tmp_path):
    config, _ = run_a
    out = copy_of(run_a, tmp_path, "damaged")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "train_loss": 7.1, "l')  # a crash in the middle of a write
    model = out / "checkpoints" / f"global_step{STOP}" / "mp_rank_00_model_states.pt"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    model.write_bytes(bytes(data))
    proc = run_python(["--ds_config", config, "--output_dir", out, "--resume", "auto"], timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert f"checkpoint {out}/checkpoints/global_step{STOP} fails its sha256 manifest (mp_rank_00_model_states.pt)" in log
    assert f"falling back to {out}/checkpoints/global_step2, the newest intact checkpoint" in log
    assert f"resumed from {out}/checkpoints/global_step2" in log
    assert f"{out}/metrics.jsonl: dropped the torn or unreadable record on line {STOP + 1}" in log
    records = metrics(out)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert {r["run_id"] for r in records} == {read_identity(str(out)).run_id}
    assert (out / "final" / "config.json").exists()


def nan_floats(state):
    if torch.is_tensor(state) and state.is_floating_point():
        state.detach().fill_(float("nan"))  # in place, shared storage
    elif isinstance(state, dict):
        for value in state.values():
            nan_floats(value)
    elif isinstance(state, (list, tuple)):
        for value in state:
            nan_floats(value)


def test_a_non_finite_loss_stops_the_run_without_saving_or_exporting(run_a, tmp_path):
    config, _ = run_a
    out = copy_of(run_a, tmp_path, "nan")
    tag = out / "checkpoints" / f"global_step{STOP}"
    with checkpoint.weights_only_loads():
        for path in tag.glob("*.pt"):
            state = torch.load(path, map_location="cpu")
            nan_floats(state)
            torch.save(state, path)
    proc = run_python(["--ds_config", config, "--output_dir", out, "--resume", "auto", "--trust_checkpoint", "true"],
                      timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2, log[-4000:]
    assert "loading it because of --trust_checkpoint" in log
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"pretrain_bert.py: error: non-finite training loss nan at step {STOP + 1}: the run is "
                           "stopped, nothing after it is saved or exported"), last
    assert f"the last checkpoint is {out}/checkpoints/global_step{STOP}" in last
    assert "Traceback" not in proc.stderr
    assert (out / "checkpoints" / "latest").read_text() == f"global_step{STOP}"
    assert not (out / "checkpoints" / f"global_step{STEPS}").exists() and not (out / "final").exists()
    assert json.dumps(metrics(out)[-1]["train_loss"]) == "NaN"
