"""Run identity, the output-dir lock, resume decisions, safe loading and start-up validation, without
training: which checkpoint ``--resume`` continues and as which run, one live job per output
directory, torn metrics, a corrupt newest checkpoint, weights-only unpickling, tokenizers that
bring code, and inputs that must fail (or warn) before any data is prepared. ``--check_only`` runs
all of it in a few seconds."""
import gzip
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest

from launch_helpers import config_file as tiny_config_file, cpu_env, load_cli, one_line_error, read_config, set_key, write_config
from launcher import REPO
from sift_ds.pretrain import checkpoint, manifest
from sift_ds.pretrain import lock as lock_module
from sift_ds.pretrain.identity import RUN_FILE, RunIdentity, read_identity, write_identity
from sift_ds.pretrain.lock import LOCK_FILE, lock_output_dir, unlock_all
from sift_ds.pretrain.metrics import purge_after
from sift_ds.pretrain.resume import decide

cli = load_cli()


def config_file(tmp_path, edit=None):
    return tiny_config_file(tmp_path, edit, vocab_size=1000)


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "OMPI_COMM_WORLD_SIZE", "TRITON_INTERPRET"):
        monkeypatch.delenv(key, raising=False)


def make_tag(save_dir, step, run_id=None, complete=True, model=b"model"):
    tag = save_dir / f"global_step{step}"
    tag.mkdir(parents=True)
    (tag / "mp_rank_00_model_states.pt").write_bytes(model)
    (tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"optimizer" * 10)
    if complete:
        manifest.write_manifest(str(tag), tag.name, step, {"run_id": run_id, "seed": 42} if run_id else {})
    return tag


# ---------------------------------------------------------------------------------------- run identity
def test_auto_continues_only_its_own_run_and_a_path_forks(tmp_path):
    """Run A trained to step 40 in out/; run B started fresh there (its own run.json) and died
    before its first save: B's `--resume auto` must not continue A's checkpoint."""
    out = tmp_path / "out"
    save_dir = out / "checkpoints"
    make_tag(save_dir, 20, "A")
    make_tag(save_dir, 40, "A")
    (save_dir / "latest").write_text("global_step40")
    write_identity(str(out), RunIdentity("B"))
    decision = decide("auto", str(out))
    assert decision.point is None and decision.identity.run_id == "B"
    assert any("global_step40 (run A)" in w and "not continued" in w for w in decision.warnings), decision.warnings
    make_tag(save_dir, 10, "B")
    decision = decide("auto", str(out))
    assert decision.point.tag == "global_step10" and decision.identity == read_identity(str(out))
    # An explicit PATH to A's checkpoint continues it as a new run, a fork, that names its parent.
    fork = decide(str(save_dir / "global_step40"), str(out))
    assert fork.point.tag == "global_step40" and fork.identity.new
    assert fork.identity.parent == {"run_id": "A", "checkpoint": str(save_dir / "global_step40")}
    assert any(n.startswith("forking: --resume") for n in fork.notes)
    # A fork killed before its first save resumes from the checkpoint it started from.
    write_identity(str(out), RunIdentity("C", fork.identity.parent))
    again = decide("auto", str(out))
    assert again.point.path == str(save_dir / "global_step40") and again.identity.run_id == "C"
    # The fallbacks of a resume are older checkpoints of the same run only.
    assert decide(str(save_dir), "elsewhere").point.fallbacks == ("global_step20",)


def test_a_directory_without_run_json_is_refused_never_wiped(tmp_path, capsys):
    """Checkpoints without manifests (an older sift_ds) and a metrics.jsonl, but no run.json."""
    out = tmp_path / "legacy"
    make_tag(out / "checkpoints", 10, complete=False)
    (out / "checkpoints" / "latest").write_text("global_step10")
    history = "".join(json.dumps({"step": s}) + "\n" for s in range(1, 41))
    (out / "metrics.jsonl").write_text(history)
    config = config_file(tmp_path)
    err = one_line_error(capsys, ["--ds_config", config, "--output_dir", str(out), "--resume", "auto"])
    assert "checkpoints without a manifest, but no run.json" in err and "--trust_checkpoint true" in err
    assert "without --resume" in err
    assert (out / "metrics.jsonl").read_text() == history and (out / "checkpoints" / "global_step10").is_dir()
    assert not (out / RUN_FILE).exists()
    adopted = cli.resolve(["--ds_config", config, "--output_dir", str(out), "--resume", "auto",
                           "--trust_checkpoint", "true"])
    assert adopted.resume.tag == "global_step10" and adopted.identity.new
    assert adopted.identity.parent["checkpoint"] == str(out / "checkpoints" / "global_step10")
    fresh = cli.resolve(["--ds_config", config, "--output_dir", str(out), "--overwrite_output_dir"])  # explicit
    assert fresh.resume is None and fresh.identity.new and fresh.delete_at_start
    # Complete checkpoints (with manifests) of a sift_ds before run ids are continued, with a warning.
    make_tag(out / "checkpoints", 20)
    adopted = decide("auto", str(out))
    assert adopted.point.tag == "global_step20" and adopted.identity.new
    assert adopted.warnings[0].startswith(f"--resume auto: {out} has no run.json")


def test_latest_naming_a_path_is_ignored_with_a_warning(tmp_path):
    out = tmp_path / "out"
    other = make_tag(tmp_path / "other" / "checkpoints", 50, "X")
    for step in (10, 20):
        make_tag(out / "checkpoints", step, "A")
    write_identity(str(out), RunIdentity("A"))
    latest = out / "checkpoints" / "latest"
    for content in ("global_step20/../global_step10", str(other)):
        latest.write_text(content)
        decision = decide("auto", str(out))
        assert decision.point.tag == "global_step20"
        assert any(w.startswith(f"{latest} holds {content!r}, not the name of a checkpoint") for w in decision.warnings)


def test_resuming_with_another_seed_warns(tmp_path):
    out = tmp_path / "out"
    make_tag(out / "checkpoints", 4, "A")
    write_identity(str(out), RunIdentity("A"))
    plan = cli.resolve(["--ds_config", config_file(tmp_path), "--output_dir", str(out), "--resume", "auto",
                        "--seed", "7"])
    assert any(w.startswith("--seed 7 differs from the resumed checkpoint's 42") for w in plan.warnings)


# ---------------------------------------------------------------------------------------- the lock
HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("lock", sys.argv[2])  # stdlib only: no torch to import
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)
lock.lock_output_dir(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


def test_a_second_live_job_is_refused_and_the_lock_dies_with_its_holder(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), lock_module.__file__], cwd=REPO, env=cpu_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError) as err:
            lock_output_dir(str(out))
        assert f"is in use by another live job (pid {holder.pid} on" in str(err.value)
        # The job itself: one line, exit status 2, before any process group or data.
        with pytest.raises(SystemExit) as exc:
            cli.main(["--ds_config", config_file(tmp_path), "--output_dir", str(out)])
        assert exc.value.code == 2
        line = capsys.readouterr().err.strip()
        assert line.startswith(f"pretrain_bert.py: error: --output_dir {out} is in use by another live job (pid "
                               f"{holder.pid}") and len(line.splitlines()) == 1
        assert not (out / RUN_FILE).exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock_output_dir(str(out))  # released by the kernel when its holder died
    assert f"pid {os.getpid()}" in (out / LOCK_FILE).read_text()
    unlock_all()


# ---------------------------------------------------------------------------------------- debris
def test_a_torn_last_metrics_line_is_dropped_with_a_warning_naming_the_file(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "train_loss": 7.0}) + "\n" for s in (1, 2, 3))
                    + '{"step": 4, "train_loss": 7.1, "lr": 0.00')
    with caplog.at_level("WARNING"):
        purge_after(str(path), 2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    assert f"{path}: dropped the torn or unreadable record on line 4" in caplog.text


def test_a_corrupt_newest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, caplog):
    save_dir = tmp_path / "checkpoints"
    make_tag(save_dir, 2, "A")
    newest = make_tag(save_dir, 4, "A")
    (newest / "mp_rank_00_model_states.pt").write_bytes(b"MODEL")  # same size, flipped bytes
    with caplog.at_level("WARNING"):
        assert checkpoint.first_intact(str(save_dir), ["global_step4", "global_step2"]) == "global_step2"
    assert f"checkpoint {newest} fails its sha256 manifest (mp_rank_00_model_states.pt): not loaded" in caplog.text
    assert f"falling back to {save_dir}/global_step2, the newest intact checkpoint" in caplog.text
    assert checkpoint.first_intact(str(save_dir), ["global_step4", "global_step2"], trust=True) == "global_step4"
    with pytest.raises(ValueError, match=r"checkpoint .*global_step4 fails its sha256 manifest .*--trust_checkpoint"):
        checkpoint.first_intact(str(save_dir), ["global_step4"])
    (save_dir / "global_step2" / "mp_rank_00_model_states.pt").write_bytes(b"MODEL")
    with pytest.raises(ValueError, match="no intact checkpoint:.*global_step4.*global_step2.*--trust_checkpoint true"):
        checkpoint.first_intact(str(save_dir), ["global_step4", "global_step2"])



class Payload:
    """Unpickling this creates a file: what a crafted checkpoint could do with any code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def test_checkpoints_are_unpickled_weights_only_even_with_a_matching_manifest(tmp_path):
    """DeepSpeed's own checkpoint engine (it passes weights_only=False) under ``weights_only_loads``."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    marker = tmp_path / "payload_ran"
    tag = make_tag(tmp_path / "checkpoints", 4, "A", model=pickle.dumps(Payload(str(marker))))
    manifest.write_manifest(str(tag), tag.name, 4, {"run_id": "A"})  # rewritten to match: integrity, not origin
    checkpoint.verify(str(tmp_path / "checkpoints"), "global_step4")
    with pytest.raises(pickle.UnpicklingError):
        with checkpoint.weights_only_loads():
            TorchCheckpointEngine().load(str(tag / "mp_rank_00_model_states.pt"), map_location="cpu")
    assert not marker.exists()
    import torch

    assert torch.load.__module__ == "torch.serialization"  # restored after the block


# ---------------------------------------------------------------------------------------- tokenizers
def test_tokenizers_are_loaded_without_their_code_and_bad_ones_are_one_line(tmp_path, capsys):
    config = config_file(tmp_path)
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "EvilTokenizer", "auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", None]}}))
    (remote / "evil.py").write_text(f"open({str(tmp_path / 'code_ran')!r}, 'w')\n")
    not_a_tokenizer = tmp_path / "t.json"
    not_a_tokenizer.write_text(json.dumps({"hello": 1}))
    empty = tmp_path / "empty"
    empty.mkdir()
    for path, message in ((remote, "cannot load a tokenizer from it"),
                          (not_a_tokenizer, "cannot load a tokenizer from it"),
                          (empty, "no tokenizer in the directory (none of tokenizer.json")):
        err = one_line_error(capsys, ["--ds_config", config, "--output_dir", str(tmp_path / "o"),
                                      "--tokenizer", str(path)])
        assert err.startswith(f"pretrain_bert.py: error: --tokenizer {path}: {message}"), err
    assert not (tmp_path / "code_ran").exists()


# ---------------------------------------------------------------------------------------- inputs
def _latin1(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(json.dumps(read_config("tiny_cpu_sift.json")).replace("tiny", "t\u00efny").encode("latin-1"))
    return ["--ds_config", str(path)]


def _not_gzip(tmp_path):
    path = tmp_path / "corpus.jsonl.gz"
    path.write_text(json.dumps({"text": "plain text"}) + "\n")
    return ["--data", str(path)]


def _script_dir(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "ds.py").write_text("import os\n")
    return ["--dataset_name", str(tmp_path / "ds")]


BAD_INPUTS = [
    (["--sift_seed", "-1"], None, "sift.seed must be >= 0, got -1 (set by --sift_seed)"),
    (["--seed", "-1"], None, "--seed must be in [0, 2**32), got -1"),
    (["--data_seed", "-1"], None, "--data_seed must be in [0, 2**32), got -1"),
    (["--max_val_samples", "0"], None, "--max_val_samples must be > 0, got 0"),
    ([], set_key(("optimizer", "params", "lr"), "fast"), "ds_config optimizer.params.lr must be a number > 0, got 'fast'"),
    ([], set_key(("optimizer", "params", "lr"), -1), "ds_config optimizer.params.lr must be a number > 0, got -1"),
    ([], set_key(("gradient_clipping",), -1), "ds_config gradient_clipping must be a number >= 0 (0: no clipping)"),
    (_latin1, None, "latin1.json is not UTF-8 text"),
    (_not_gzip, None, "corpus.jsonl.gz: not a gz file"),
    (_script_dir, None, "holds a dataset loading script (ds.py); scripts are code and are not run"),
]


@pytest.mark.parametrize("argv,edit,message", BAD_INPUTS, ids=[m[:30] for *_, m in BAD_INPUTS])
def test_bad_inputs_are_one_line_naming_the_flag_key_or_file(tmp_path, capsys, argv, edit, message):
    argv = argv(tmp_path) if callable(argv) else argv
    if "--ds_config" not in argv:
        argv = ["--ds_config", config_file(tmp_path, edit)] + argv
    err = one_line_error(capsys, argv + ["--output_dir", str(tmp_path / "o")])
    assert message in err, err


def test_likely_mistakes_are_warnings(tmp_path):
    config = config_file(tmp_path, set_key(("sift", "selection_start_step"), 40))
    plan = cli.resolve(["--ds_config", config, "--output_dir", str(tmp_path / "o"), "--max_steps", "30",
                        "--vocab_size", "50"])
    assert any(w.startswith("sift.selection_start_step=40 >= max_steps=30: SIFT never selects") for w in plan.warnings)
    assert any(w.startswith("--vocab_size 50 is tiny") for w in plan.warnings)


# ---------------------------------------------------------------------------------------- --check_only
def test_check_only_validates_everything_in_seconds_and_touches_nothing(tmp_path, capsys):
    """In process (``main`` returns: exit status 0); the command line is the same function."""
    config = config_file(tmp_path, set_key(("sift", "selection_start_step"), 40))
    out = tmp_path / "never_created"
    common = ["--ds_config", config, "--output_dir", str(out), "--check_only"]
    started = time.perf_counter()
    assert cli.main(common + ["--max_steps", "30"]) is None
    seconds = time.perf_counter() - started
    captured = capsys.readouterr()
    assert "pretrain_bert.py: check_only: ok: 30 steps, world 1" in captured.out
    assert "pretrain_bert.py: warning: sift.selection_start_step=40 >= max_steps=30" in captured.err
    with pytest.raises(SystemExit) as exc:
        cli.main(common + ["--sift_exit_layer", "5"])  # the tiny model has 2 layers
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == ("pretrain_bert.py: error: sift.exit_layer=5 exceeds the model's depth "
                                               "(2 encoder layers)")
    assert not out.exists()
    assert seconds < 20, seconds  # no tokenizer, data, model or process group
