"""Issue 8, sections 3 and 4: bad input found by trying to break the job is one line naming the
problem (exit status 2), before any work, or a documented behaviour; long documents and stale
build locks do not make a run explode or hang."""
import json
import os
import subprocess
import time

import pytest

from launch_helpers import REPO, config_file, load_cli, one_line_error, read_config, set_key, write_config
from sift_ds.pretrain import corpus as corpus_lib, runtime
from sift_ds.pretrain.data import tokenize_corpus, tokenize_document
from sift_ds.pretrain.tokenizer import PIECE_CHARS, batched_texts, bounded_pieces, train_wordpiece

cli = load_cli()


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "OMPI_COMM_WORLD_SIZE", "TRITON_INTERPRET"):
        monkeypatch.delenv(key, raising=False)


def _set(*path_and_value):
    *path, value = path_and_value
    return set_key(path, value)


# ---------------------------------------------------------------------------------------- ds_config
BAD_CONFIGS = [
    (None, "[1, 2]", "must hold a JSON object, got a JSON list"),
    (_set("optimizer", "type", "Adamm"), None, "ds_config optimizer.type 'Adamm' is not an optimizer DeepSpeed "
                                               "knows; did you mean 'Adam'?"),
    (_set("optimizer", "type", 3), None, "ds_config optimizer.type 3 is not an optimizer DeepSpeed knows"),
    (_set("scheduler", "type", "WarmupDecay"), None, "ds_config scheduler.type 'WarmupDecay' is not a scheduler "
                                                     "DeepSpeed knows; did you mean 'WarmupDecayLR'?"),
    (_set("zero_optimization", "stage", 7), None, "ds_config zero_optimization.stage: Input should be 0, 1, 2, 3"),
    (_set("zero_optimization", "stage", 7), None, "got 7"),
    (_set("sift", "kernel", "triton"), None, "sift.kernel='triton' on the CPU needs TRITON_INTERPRET=1"),
]


@pytest.mark.parametrize("edit,raw,message", BAD_CONFIGS, ids=[m[:40] for *_, m in BAD_CONFIGS])
def test_bad_ds_configs_are_one_line_before_any_work(tmp_path, capsys, edit, raw, message):
    out = tmp_path / "out"
    started = time.perf_counter()
    err = one_line_error(capsys, ["--ds_config", config_file(tmp_path, edit, raw), "--output_dir", str(out)])
    assert message in err
    assert time.perf_counter() - started < 20  # no tokenizer, data or DeepSpeed set-up happened first
    assert not (out / "tokenizer").exists() and not (out / "metrics.jsonl").exists()


def test_a_top_level_key_typo_warns_with_the_closest_key(tmp_path):
    def typo(config):
        config["train_micro_batch_size_per_gpus"] = config.pop("train_micro_batch_size_per_gpu")
        config["train_micro_batch_size_per_gpu"] = 16
        config["gradient_clippping"] = 1.0

    plan = cli.resolve(["--ds_config", config_file(tmp_path, typo), "--output_dir", str(tmp_path / "o")])
    assert ("ds_config key 'train_micro_batch_size_per_gpus' is not read by DeepSpeed and is ignored; did you mean "
            "'train_micro_batch_size_per_gpu'?") in plan.warnings
    assert any("'gradient_clippping'" in w and "did you mean 'gradient_clipping'?" in w for w in plan.warnings)
    clean = cli.resolve(["--ds_config", config_file(tmp_path), "--output_dir", str(tmp_path / "o")])
    assert clean.warnings == []  # the shipped config: every key is one DeepSpeed reads


def test_triton_without_the_package_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    real = cli.resolve_plan.__globals__["importlib"].util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "triton" else real(name, *a))
    err = one_line_error(capsys, ["--ds_config", config_file(tmp_path, _set("sift", "kernel", "triton")),
                                  "--output_dir", str(tmp_path / "o")])
    assert "sift.kernel='triton' needs the triton package" in err


# ---------------------------------------------------------------------------------------- corpus
def test_json_lines_rows_without_a_string_text_are_skipped_and_counted(tmp_path, caplog):
    rows = [{"text": "first document"}, {"text": None}, {"other": 1}, {"text": 5}, {"text": ["a", "b"]},
            {"text": "last document"}]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level("WARNING"):
        ds = corpus_lib.load_corpus([str(path)], cache_dir=str(tmp_path / "cache"))
    assert ds["text"] == ["first document", "last document"] and ds.column_names == ["text"]
    assert f"{path}: skipped 4 of 6 rows whose 'text' is null, missing or not a string" in caplog.text
    tokenizer = train_wordpiece(batched_texts(ds), 100, min_frequency=1)  # the TypeError of the issue
    assert tokenizer.tokenize("first document")


# ---------------------------------------------------------------------------------------- long documents
@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece(batched_texts(corpus_lib.default_corpus()), 1000)


def test_long_documents_reach_the_tokenizer_in_bounded_pieces_with_the_same_tokens(tokenizer):
    text = " ".join(corpus_lib.default_corpus()["text"][:20])
    long_line = (text.replace("\n", " ") + " ") * max(1, (3 * PIECE_CHARS) // len(text) + 1)
    assert len(long_line) > 3 * PIECE_CHARS
    seen = []

    class Spy:
        def __call__(self, texts, **kwargs):
            seen.extend(len(t) for t in texts)
            return tokenizer(texts, **kwargs)

    ids = tokenize_document(Spy(), long_line)
    assert max(seen) <= PIECE_CHARS and len(seen) >= 3
    assert ids.tolist() == tokenizer(long_line, add_special_tokens=False)["input_ids"]  # the same tokens
    assert "".join(bounded_pieces(long_line)) == long_line
    no_space = "x" * (2 * PIECE_CHARS + 5)
    assert [len(p) for p in bounded_pieces(no_space)] == [PIECE_CHARS, PIECE_CHARS, 5]


def test_tokenize_corpus_keeps_document_boundaries(tokenizer, tmp_path):
    ds = corpus_lib.default_corpus().select(range(3))
    tokenized = tokenize_corpus(ds, tokenizer, str(tmp_path))
    for text, row in zip(ds["text"], tokenized):
        assert row["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
        assert row["num_tokens"] == len(row["input_ids"])


# ---------------------------------------------------------------------------------------- hangs
def test_stale_torch_extension_build_locks_are_reported(tmp_path, caplog, monkeypatch):
    old, fresh = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock", tmp_path / "fused_adam" / "lock"
    for lock in (old, fresh):
        lock.parent.mkdir(parents=True)
        lock.write_text("")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert runtime.stale_build_locks(str(tmp_path)) == [str(old)]
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    with caplog.at_level("WARNING"):
        runtime.warn_stale_build_locks(runtime.logging.getLogger("t"))
    assert f"stale torch extension build lock {old} (60 min old)" in caplog.text


def test_make_gives_runs_and_tests_a_project_local_extensions_dir():
    dry = subprocess.run(["make", "-n", "test", "train", "bench"], cwd=REPO, capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"})
    venv = os.path.join(REPO, ".venv", "torch_extensions")
    lines = dry.stdout.replace("\\\n", " ").splitlines()
    commands = [line for line in lines if "bin/pytest" in line or "bin/deepspeed" in line]
    assert len(commands) >= 3 and all(f"TORCH_EXTENSIONS_DIR={venv}" in line for line in commands), dry.stdout
