"""What a run records about what it trains, and what a resume, the online reference model and a full
disk do with it, with real runs (one process, a world of one) sharing one run A stopped at step 2
of 4 on a text corpus:

* the manifest records the corpus's sha256 and the settings that change what is trained; a resume
  with the documents in reverse order (same block count), another keep_ratio or criterion, or
  another holdout is refused in one line (a fork warns instead); a checkpoint written before
  these records resumes with a warning;
* criterion reducible's online reference is checked before step 1 (vocabulary larger or smaller,
  too few positions; trained on the run's own blocks: a warning), and a reference whose losses are
  NaN stops the run at the first record with exit status 2;
* a disk that fills during a save (a tmpfs of the right size) and a file-size limit (``ulimit -f``)
  are one line naming the directory and the checkpoint that stays valid.
"""
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest
import torch
from pydoc_data.topics import topics
from transformers import BertConfig, BertForMaskedLM

from launch_helpers import (SCRIPT, cpu_env, load_cli, metrics, one_line_error, pretrain_2_ranks, run_python,
                            small_config)
from launcher import REPO
from sift_ds.pretrain.manifest import read_manifest
from sift_ds.pretrain.models import model_config
from sift_ds.criteria import reducible_scores

cli = load_cli()
TOKENIZER = os.path.join(REPO, "ds_configs", "tokenizers", "pydoc_wordpiece_4096")
STEPS, STOP = 4, 2
DOCUMENTS = [topics[k] for k in sorted(topics)][:60]


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)


def write_corpus(path, documents):
    path.write_text("\n\n".join(" ".join(d.split()) for d in documents) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run_a")
    config = small_config(tmp, max_steps=STEPS, save_interval=STOP)
    data = write_corpus(tmp / "corpus.txt", DOCUMENTS)
    out = tmp / "a"
    common = ["--ds_config", config, "--data", data, "--tokenizer", TOKENIZER]
    proc = run_python(common + ["--output_dir", out, "--exit_interval", STOP], timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return common, out, tmp


def copy_of(run_a, tmp_path, name="copy"):
    copy = tmp_path / name
    shutil.copytree(run_a[1], copy, ignore=shutil.ignore_patterns(".lock*", "*.lock"))
    return copy


def manifest_run(out, step=STOP):
    return read_manifest(str(out / "checkpoints" / f"global_step{step}"))["run"]


# ------------------------------------------------------------------ the corpus and the training settings
def test_the_manifest_records_the_corpus_by_content_and_what_is_trained(run_a):
    common, out, tmp = run_a
    run = manifest_run(out)
    file_sha = hashlib.sha256((tmp / "corpus.txt").read_bytes()).hexdigest()
    assert run["corpus"]["sha256"] == hashlib.sha256(json.dumps([[file_sha]]).encode()).hexdigest()  # the studies'
    assert run["training"]["sift"]["keep_ratio"] == 0.5 and "kernel" not in run["training"]["sift"]
    assert run["training"]["holdout_fraction"] == 0.0


@pytest.mark.parametrize("check_only", [False, True], ids=["start-up", "check_only"])
def test_a_resume_with_the_documents_reversed_is_refused_naming_both(run_a, tmp_path, capsys, check_only):
    common, out, tmp = run_a
    reversed_data = write_corpus(tmp_path / "reversed.txt", DOCUMENTS[::-1])
    argv = [*map(str, common), "--output_dir", str(out), "--resume", "auto"]
    argv[argv.index("--data") + 1] = reversed_data
    err = one_line_error(capsys, argv + (["--check_only"] if check_only else []))
    recorded = manifest_run(out)["corpus"]["sha256"][:12]
    assert f"the checkpoint was trained on another corpus: --data {tmp / 'corpus.txt'} (sha256 {recorded})" in err
    assert f"this run's is --data {reversed_data} (sha256" in err


def test_the_same_corpus_moved_elsewhere_resumes(run_a, tmp_path):
    common, out, tmp = run_a
    moved = tmp_path / "moved.txt"
    shutil.copy(tmp / "corpus.txt", moved)
    argv = [*map(str, common), "--output_dir", str(out), "--resume", "auto", "--check_only"]
    argv[argv.index("--data") + 1] = str(moved)
    plan = cli.resolve(argv)
    assert plan.resume is not None and not [w for w in plan.warnings if "corpus" in w]


@pytest.mark.parametrize("flags,change", [
    (["--sift_keep_ratio", "0.25"], "sift.keep_ratio 0.5 -> 0.25"),
    (["--sift_criterion", "loss"], "sift.criterion 'entropy' -> 'loss'"),
    (["--holdout_fraction", "0.1"], "--holdout_fraction 0.0 -> 0.1"),
], ids=["keep_ratio", "criterion", "holdout"])
def test_a_resume_that_changes_what_is_trained_is_refused_and_a_fork_warns(run_a, tmp_path, capsys, flags, change):
    common, out, _ = run_a
    base = [*map(str, common), "--check_only"]
    err = one_line_error(capsys, base + ["--output_dir", str(out), "--resume", "auto"] + flags)
    assert f"this run changes what the checkpoint's run trains ({change})" in err
    tag = str(out / "checkpoints" / f"global_step{STOP}")
    fork = cli.resolve(base + ["--output_dir", str(tmp_path / "fork"), "--resume", tag] + flags)
    assert f"forking {tag} with other training settings: {change}" in fork.warnings
    same = cli.resolve(base + ["--output_dir", str(out), "--resume", "auto", "--sift_kernel", "auto"])
    assert not [w for w in same.warnings if "training settings" in w]  # the backend is no change to what trains


def test_a_checkpoint_without_records_resumes_with_a_warning(run_a, tmp_path):
    common, _, _ = run_a
    out = copy_of(run_a, tmp_path)
    path = out / "checkpoints" / f"global_step{STOP}" / "sift_manifest.json"
    manifest = json.loads(path.read_text())
    for key in ("corpus", "training"):
        manifest["run"].pop(key)
    path.write_text(json.dumps(manifest))
    proc = run_python([*common, "--output_dir", out, "--resume", "auto"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "the checkpoint records neither its corpus nor its training settings" in proc.stdout + proc.stderr
    assert [r["step"] for r in metrics(out)][-1] == STEPS
    assert manifest_run(out, STEPS)["corpus"]["sha256"] == manifest_run(run_a[1])["corpus"]["sha256"]


# ------------------------------------------------------------------ the online reference model
def reference(tmp_path, name, **overrides):
    config = model_config("tiny", vocab_size=4096)
    for key, value in overrides.items():
        setattr(config, key, value)
    folder = tmp_path / name
    BertForMaskedLM(BertConfig(**config.to_dict())).save_pretrained(str(folder))
    return str(folder)


def reducible(common, reference_dir):
    return [*map(str, common), "--sift_criterion", "reducible", "--sift_reference", reference_dir,
            "--sift_selection_start_step", "0"]


@pytest.mark.parametrize("overrides,message", [
    ({"vocab_size": 8192}, "the reference model has a vocabulary of 8192 tokens, this run's tokenizer 4096"),
    ({"vocab_size": 1000}, "the reference model has a vocabulary of 1000 tokens, this run's tokenizer 4096"),
    ({"max_position_embeddings": 32}, "the reference model covers 32 positions, fewer than --seq_len 64"),
], ids=["larger_vocabulary", "smaller_vocabulary", "positions"])
def test_the_online_reference_is_checked_at_start_up(run_a, tmp_path, capsys, overrides, message):
    ref = reference(tmp_path, "ref", **overrides)
    capsys.readouterr()  # save_pretrained's progress bar
    err = one_line_error(capsys, reducible(run_a[0], ref) + ["--output_dir", str(tmp_path / "o")])
    assert f"sift.reducible.reference {ref}: {message}" in err


def test_a_reference_of_nan_losses_stops_the_run_and_one_on_the_same_blocks_warns(run_a, tmp_path):
    ref = reference(tmp_path, "nan_ref")
    state = BertForMaskedLM.from_pretrained(ref)
    with torch.no_grad():
        for p in state.parameters():
            p.fill_(float("nan"))
    state.save_pretrained(ref)
    (tmp_path / "nan_ref" / "sift_run.json").write_text(json.dumps(manifest_run(run_a[1])))  # trained like run A
    out = tmp_path / "o"
    proc = pretrain_2_ranks(reducible(run_a[0], ref) + ["--output_dir", out], check=False)  # both ranks stop
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2, log[-4000:]
    assert f"sift.reducible.reference {ref} was trained on blocks this run trains on" in log
    errors = [line for line in log.splitlines() if "pretrain_bert.py: error:" in line]
    assert len(errors) == 2 and all("pretrain_bert.py: error: non-finite selection scores (100% of the rows scored "
                                    "since the last record, more than 50%: the selection keeps rows it cannot rank) "
                                    "at step 1: the run is stopped" in e for e in errors), errors
    assert "Traceback" not in log and not (out / "checkpoints" / "latest").exists()
    assert metrics(out)[-1]["sift/nonfinite_scores"] == 32  # every gross row (the record is written first)


def test_a_reference_term_that_is_not_finite_ranks_its_row_last():
    scores = reducible_scores(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, float("nan"), float("inf"), 2.0]))
    assert scores[1] == float("-inf") and scores[2] == float("-inf") and torch.isfinite(scores[[0, 3]]).all()


# ------------------------------------------------------------------ a full disk
def resume_until_save_fails(common, out, preexec=None):
    return subprocess.run([sys.executable, SCRIPT, *map(str, common), "--output_dir", str(out), "--resume", "auto"],
                          cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=600, preexec_fn=preexec)


def assert_one_line_and_intact(proc, out, cause):
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-4000:]
    last = proc.stderr.strip().splitlines()[-1]
    tag_dir = out / "checkpoints" / f"global_step{STEPS}"
    valid = out / "checkpoints" / f"global_step{STOP}"
    assert last.startswith(f"pretrain_bert.py: error: cannot save checkpoint {tag_dir}: {cause}"), last
    assert f"the last valid checkpoint is {valid} (--resume auto continues from it)" in last
    assert "Traceback" not in proc.stderr
    assert (out / "checkpoints" / "latest").read_text() == f"global_step{STOP}"
    assert read_manifest(str(valid)) is not None and read_manifest(str(tag_dir)) is None


def can_mount() -> bool:
    with tempfile.TemporaryDirectory() as probe:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", probe],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", probe], check=True)
    return ok


def test_a_full_disk_while_saving_is_one_line_naming_the_directory_and_the_valid_checkpoint(run_a, tmp_path):
    if not can_mount():
        pytest.skip("needs a tmpfs mount (root)")
    used = sum(f.stat().st_size for f in run_a[1].rglob("*") if f.is_file())
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={used + (1 << 20)}", "tmpfs", str(mount)], check=True)
    try:
        out = mount / "a"
        shutil.copytree(run_a[1], out)
        proc = resume_until_save_fails(run_a[0], out)
        needed = sum(e["bytes"] for e in read_manifest(str(out / "checkpoints" / f"global_step{STOP}"))["files"].values())
        assert_one_line_and_intact(proc, out, "the disk is full (")
        assert f"; a checkpoint of this run takes {needed} bytes)" in proc.stderr
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_file_size_limit_while_saving_is_one_line(run_a, tmp_path):
    out = copy_of(run_a, tmp_path)
    limit = 1 << 20  # below the model file, above every other file the resumed run writes

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = resume_until_save_fails(run_a[0], out, limited)
    assert_one_line_and_intact(proc, out, f"a file reached the file-size limit (ulimit -f) of {limit} bytes")
