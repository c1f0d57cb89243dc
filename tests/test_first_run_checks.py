"""What a new user's first commands meet at start-up (in process, no run): a BERT-base-size model
with no corpus given is refused, naming the flag that makes the embedded demo corpus deliberate (the
tiny model of `make train` is not); `--check_only` on a CPU node checks a GPU (fp16) config and says
what it could not check, while a real start with it is still refused; the JIT build of DeepSpeed's
CPU op is announced when it will happen."""
import os

import pytest

from launch_helpers import CONFIGS, load_cli, one_line_error

cli = load_cli()
BASE_FP16 = os.path.join(CONFIGS, "bert_base_zero2_fp16_sift.json")
BASE_BF16 = os.path.join(CONFIGS, "bert_base_zero2_bf16_sift.json")


@pytest.fixture(autouse=True)
def one_cpu_process(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")


def test_a_base_model_without_a_corpus_is_refused_naming_the_flag(tmp_path, capsys):
    argv = ["--ds_config", BASE_BF16, "--output_dir", str(tmp_path / "run"), "--check_only"]
    err = one_line_error(capsys, argv)
    assert "--model base (hidden size 768) with no --data" in err and "--allow_embedded_corpus true" in err
    assert cli.resolve(argv + ["--allow_embedded_corpus", "true"]).options.model == "base"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("A first document.\n\nA second one.\n")
    assert cli.resolve(argv + ["--data", str(corpus)]).data_files == [str(corpus)]


def test_the_tiny_model_of_make_train_still_takes_the_embedded_corpus(tmp_path):
    plan = cli.resolve(["--ds_config", os.path.join(CONFIGS, "tiny_cpu_sift.json"), "--output_dir",
                        str(tmp_path / "run"), "--check_only"])
    assert plan.options.model == "tiny" and plan.data_files is None


def test_check_only_checks_an_fp16_config_on_a_cpu_node_and_says_what_it_could_not(tmp_path, capsys):
    argv = ["--ds_config", BASE_FP16, "--output_dir", str(tmp_path / "run"), "--allow_embedded_corpus", "true"]
    plan = cli.resolve(argv + ["--check_only"])
    unchecked = [w for w in plan.warnings if w.startswith("ds_config fp16.enabled: not checked on this node")]
    assert len(unchecked) == 1 and "the run needs GPUs" in unchecked[0]
    assert plan.ds_config["fp16"]["enabled"] and plan.max_steps == 800000
    broken = tmp_path / "broken.json"  # the rest is still checked: a bad key in the same config is refused
    broken.write_text(open(BASE_FP16).read().replace('"stage": 2', '"stage": 7'))
    err = one_line_error(capsys, ["--ds_config", str(broken), "--output_dir", str(tmp_path / "b"),
                                  "--allow_embedded_corpus", "true", "--check_only"])
    assert "stage" in err
    err = one_line_error(capsys, argv)  # a real start on the CPU: refused as before
    assert "DeepSpeed does not support fp16 on the CPU accelerator" in err


def test_the_cpu_op_build_is_announced_only_when_deepspeed_will_compile_it(tmp_path, monkeypatch):
    """`make train` on a fresh clone: the shared-memory all-reduce op is not yet in TORCH_EXTENSIONS_DIR,
    so the process-group start compiles it (and says so first); once its library is there, nothing is
    announced. (The build itself, minutes long, is what the 2-rank runs of the suite do.)"""
    from sift_ds.pretrain.runtime import build_root, ops_to_build

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert build_root() == str(tmp_path) and ops_to_build() == ["deepspeed_shm_comm"]
    (tmp_path / "deepspeed_shm_comm").mkdir()
    (tmp_path / "deepspeed_shm_comm" / "deepspeed_shm_comm.so").write_bytes(b"")
    assert ops_to_build() == []
