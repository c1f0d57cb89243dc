"""A second run never destroys the first (HF's convention, for the pretraining job): a start without
--resume in an output directory that holds a run is refused in one line (also by --check_only) and
changes nothing; --overwrite_output_dir starts a new run there, deleting the previous run's files and
nothing else. Start-up decisions only, in process; tests/test_resume.py checks a real run's checkpoint
files byte for byte after a refused start."""
import json
import os
import shutil

import pytest

from launch_helpers import CONFIGS, config_file, load_cli, one_line_error
from sift_ds.pretrain.output_dir import clear

cli = load_cli()


def used(out, *what):
    """An output directory holding the traces of a run: run.json, metrics.jsonl and/or a checkpoint."""
    out.mkdir(parents=True, exist_ok=True)
    if "run.json" in what:
        (out / "run.json").write_text(json.dumps({"run_id": "a" * 16}))
    if "metrics.jsonl" in what:
        (out / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n")
    if "checkpoints" in what:
        (out / "checkpoints" / "global_step5").mkdir(parents=True)
        (out / "checkpoints" / "latest").write_text("global_step5")
    return out


@pytest.mark.parametrize("what", [("run.json",), ("metrics.jsonl",), ("checkpoints",),
                                  ("run.json", "metrics.jsonl", "checkpoints")])
def test_a_used_output_dir_without_resume_is_refused(tmp_path, capsys, what):
    out = used(tmp_path / "out", *what)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    for check in ([], ["--check_only"]):
        err = one_line_error(capsys, ["--ds_config", config_file(tmp_path), "--output_dir", str(out), *check])
        shown = {"run.json": "run.json", "metrics.jsonl": "metrics.jsonl", "checkpoints": "checkpoints/"}
        assert err == (f"pretrain_bert.py: error: --output_dir {out} already holds a run "
                       f"({', '.join(shown[w] for w in what)}); nothing was changed: pass --resume auto to continue "
                       "it, or --overwrite_output_dir to delete its files and start a new run there")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_what_is_not_a_run_is_no_reason_to_refuse(tmp_path):
    """An empty metrics.jsonl, an empty checkpoints/ or the user's own files are not a run."""
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "metrics.jsonl").write_text("")
    (out / "notes.txt").write_text("mine")
    plan = cli.resolve(["--ds_config", config_file(tmp_path), "--output_dir", str(out)])
    assert plan.resume is None and plan.identity.new and plan.delete_at_start == ()


def test_overwrite_output_dir_deletes_the_previous_runs_files_only(tmp_path):
    out = used(tmp_path / "out", "run.json", "metrics.jsonl", "checkpoints")
    for name in ("run_config.json", "unigram_counts.npy"):
        (out / name).write_text("old")
    for folder in ("tokenizer", "final", "tensorboard/sift"):
        (out / folder).mkdir(parents=True)
        (out / folder / "file").write_text("old")
    (out / "notes.txt").write_text("mine")
    plan = cli.resolve(["--ds_config", config_file(tmp_path), "--output_dir", str(out), "--overwrite_output_dir"])
    assert plan.resume is None and plan.identity.new
    assert sorted(p.replace(str(out) + "/", "") for p in plan.delete_at_start) == sorted(
        ["run.json", "run_config.json", "metrics.jsonl", "checkpoints", "final", "tokenizer", "unigram_counts.npy",
         "tensorboard"])
    assert any(n.startswith("--overwrite_output_dir: a new run; the previous run's files are deleted at start-up: ")
               for n in plan.notes)
    assert (out / "checkpoints" / "latest").exists()  # deciding deletes nothing: the job does, holding the lock
    clear(plan.delete_at_start)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_overwrite_output_dir_refuses_what_would_delete_its_own_inputs(tmp_path, capsys):
    out = used(tmp_path / "out", "run.json")
    argv = ["--ds_config", config_file(tmp_path), "--output_dir", str(out), "--overwrite_output_dir"]
    err = one_line_error(capsys, argv + ["--resume", "auto"])
    assert "--resume auto continues a run and --overwrite_output_dir starts a new one: give one of them" in err
    shutil.copytree(os.path.join(CONFIGS, "tokenizers", "pydoc_wordpiece_4096"), out / "tokenizer")  # the old run's
    err = one_line_error(capsys, argv + ["--tokenizer", str(out / "tokenizer")])
    assert err == (f"pretrain_bert.py: error: --overwrite_output_dir would delete {out / 'tokenizer'}, which holds "
                   f"--tokenizer {out / 'tokenizer'} that this run reads: move it out of the output directory first")
    err = one_line_error(capsys, ["--ds_config", config_file(tmp_path, overwrite_output_dir=True),
                                  "--output_dir", str(out)])
    assert "'pretrain' section: unknown key 'overwrite_output_dir'" in err  # a decision per command, not a recipe
