"""Training from prepared data on 2 ranks (real DeepSpeed on the CPU, gloo, global-scope selection):
the run from launch/prepare_data.py's blocks (--prepared) logs the loss curve of the same run that
tokenizes the same corpus in process, and stopped at step 2 and resumed, it still does, bitwise, to
the final parameters; both runs record the same corpus identity. The collective timeout is an option."""
import os
import subprocess
import sys

import pytest
import torch
from pydoc_data.topics import topics
from safetensors.torch import load_file

from launch_helpers import cpu_env, metrics, one_line_error, pretrain_2_ranks, small_config
from launcher import REPO
from sift_ds.pretrain.options import build_parser
from sift_ds.prepare.pipeline import Request, prepare
from sift_ds.pretrain.manifest import read_manifest

TOKENIZER = os.path.join(REPO, "ds_configs", "tokenizers", "pydoc_wordpiece_4096")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(in-process run, prepared run stopped at step 2 and resumed): output directories."""
    tmp = tmp_path_factory.mktemp("prepared_runs")
    corpus = tmp / "lines.txt"
    corpus.write_text("\n".join(line for key in sorted(topics) for line in topics[key].splitlines()
                                if line.strip()) + "\n")
    prepared = tmp / "prepared"
    prepare(Request(out=str(prepared), data=[str(corpus)], sample_by="line", tokenizer=TOKENIZER, seq_len=64,
                    workers=2, documents_per_shard=2000, cache_dir=str(tmp / "cache")))
    common = ["--ds_config", small_config(tmp, max_steps=4), "--sift_warmup_steps", "2",
              "--sift_start_after_lr_peak", "true"]
    in_process, from_prepared = tmp / "in_process", tmp / "from_prepared"
    pretrain_2_ranks(common + ["--data", corpus, "--sample_by", "line", "--tokenizer", TOKENIZER,
                               "--output_dir", in_process])
    first = pretrain_2_ranks(common + ["--prepared", prepared, "--output_dir", from_prepared, "--exit_interval", 2])
    second = pretrain_2_ranks(common + ["--prepared", prepared, "--output_dir", from_prepared, "--resume", "auto"])
    return in_process, from_prepared, first.stdout + first.stderr + second.stdout + second.stderr


def test_prepared_data_trains_the_in_process_loss_curve_and_resumes_exactly(runs):
    in_process, from_prepared, log = runs
    assert "data: --prepared" in log and "pack_mlm" not in log  # no tokenization, no packing
    assert f"resumed from {from_prepared}/checkpoints/global_step2" in log
    want, got = metrics(in_process), metrics(from_prepared)
    assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2, 3, 4]
    assert [r["train_loss"] for r in got] == [r["train_loss"] for r in want]
    assert got[-1]["val_loss"] == want[-1]["val_loss"]
    selection = ("sift/kept_fraction", "sift/score_kept_mean", "sift/score_dropped_mean")
    assert [[repr(r[k]) for k in selection] for r in got] == [[repr(r[k]) for k in selection] for r in want]
    final_want, final_got = (load_file(run / "final" / "model.safetensors") for run in (in_process, from_prepared))
    assert final_want.keys() == final_got.keys()
    assert all(torch.equal(final_want[name], final_got[name]) for name in final_want)


def test_both_runs_record_the_same_corpus_identity(runs):
    in_process, from_prepared, _ = runs
    corpora = [read_manifest(str(run / "checkpoints" / "global_step4"))["run"]["corpus"] for run in runs[:2]]
    assert corpora[0]["sha256"] == corpora[1]["sha256"] and corpora[0]["source"] == corpora[1]["source"]


def test_the_collective_timeout_is_an_option(tmp_path, capsys):
    """--dist_timeout_minutes reaches the process group (gloo's timeout), is in --help, and 0 is refused."""
    code = ("import torch, torch.distributed as dist\n"
            "from sift_ds.pretrain.runtime import init_distributed\n"
            "init_distributed(45)\n"
            "print(dist.group.WORLD._get_backend(torch.device('cpu')).options._timeout)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cpu_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.stdout.strip().splitlines()[-1] == "0:45:00", proc.stderr[-2000:]
    help_text = build_parser().format_help()
    option_help = " ".join(help_text.split("--dist_timeout_minutes DIST_TIMEOUT_MINUTES")[-1].split("\n  --")[0].split())
    assert "DeepSpeed's default: 10" in option_help and option_help.endswith("(default: 30.0)"), option_help
    err = one_line_error(capsys, ["--ds_config", small_config(tmp_path), "--dist_timeout_minutes", "0", "--check_only"])
    assert err.endswith("--dist_timeout_minutes must be > 0, got 0.0")
