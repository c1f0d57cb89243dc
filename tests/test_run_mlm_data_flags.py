"""launch/run_mlm_sift.py takes run_mlm.py's data flags and does what run_mlm.py does with them:
``--dataset_name`` (here a local folder of text files, which ``datasets.load_dataset`` reads as it
reads a hub name), ``--validation_file`` (the evaluation set, nothing held out of the training file),
``--preprocessing_num_workers`` (the texts tokenized by N processes) and ``--do_eval`` without
``--do_train`` (an evaluation of the given model, nothing trained or saved). In process, a few seconds."""
import json
import os
import sys
from contextlib import nullcontext
from types import SimpleNamespace

import pytest

from launch_helpers import load_cli
from launcher import REPO

pytest.importorskip("accelerate", reason="run_mlm_sift.py needs the hf extra (accelerate)")

MLM_SCRIPT = os.path.join(REPO, "launch", "run_mlm_sift.py")
MODEL_CONFIG = os.path.join(REPO, "ds_configs", "models", "bert_L4_H128.json")
TOKENIZER = os.path.join(REPO, "ds_configs", "tokenizers", "pydoc_wordpiece_4096")


def doc_lines(n: int, start: int = 0):
    from pydoc_data.topics import topics

    lines = [line for key in sorted(topics) for line in topics[key].splitlines() if line.strip()]
    return lines[start:start + n]


def data_args(**given):
    fields = dict(dataset_name=None, dataset_config_name=None, train_file=None, validation_file=None, sample_by="line",
                  validation_split_percentage=10, preprocessing_num_workers=None, line_by_line=False,
                  overwrite_cache=True)
    return SimpleNamespace(**{**fields, **given})


def test_dataset_name_and_validation_file_give_the_splits_run_mlm_gives(tmp_path):
    cli = load_cli(MLM_SCRIPT)
    model = SimpleNamespace(cache_dir=str(tmp_path / "cache"), token=None)
    folder = tmp_path / "dataset"
    folder.mkdir()
    train, held = doc_lines(40), doc_lines(6, start=40)
    (folder / "train.txt").write_text("\n".join(train) + "\n")
    (folder / "validation.txt").write_text("\n".join(held) + "\n")
    raw = cli.load_raw_datasets(model, data_args(dataset_name=str(folder)))
    assert list(raw["train"]["text"]) == train and list(raw["validation"]["text"]) == held  # the folder's splits
    raw = cli.load_raw_datasets(model, data_args(train_file=str(folder / "train.txt"),
                                                       validation_file=str(folder / "validation.txt")))
    assert list(raw["train"]["text"]) == train and list(raw["validation"]["text"]) == held  # nothing held out


def test_preprocessing_num_workers_tokenizes_in_n_processes_as_run_mlm(tmp_path):
    """N processes each take a contiguous shard, concatenate its texts and cut it into blocks (each
    shard's remainder dropped, as run_mlm.py drops each map batch's): checked against that, by hand."""
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer

    cli = load_cli(MLM_SCRIPT)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    texts = doc_lines(400)
    raw = DatasetDict(train=Dataset.from_dict({"text": texts}))
    training = SimpleNamespace(do_train=True, main_process_first=lambda desc: nullcontext())
    two = cli.tokenize_datasets(raw, data_args(preprocessing_num_workers=2), training, tokenizer, 64)
    expected = []
    for shard in (texts[:200], texts[200:]):
        ids = [t for text in shard for t in tokenizer(text)["input_ids"]]
        expected += [ids[i:i + 64] for i in range(0, len(ids) // 64 * 64, 64)]
    assert len(expected) > 10 and two["train"]["input_ids"] == expected


def test_do_eval_alone_evaluates_the_given_model_and_trains_nothing(tmp_path, monkeypatch):
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    model_dir, out, text = tmp_path / "model", tmp_path / "out", tmp_path / "eval.txt"
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(MODEL_CONFIG, vocab_size=len(tokenizer))
                                     ).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    text.write_text("\n".join(doc_lines(300)) + "\n")
    monkeypatch.setattr(sys, "argv", [MLM_SCRIPT, "--model_name_or_path", str(model_dir), "--validation_file",
                                      str(text), "--do_eval", "--output_dir", str(out), "--max_seq_length", "64",
                                      "--max_eval_samples", "8", "--use_cpu", "--report_to", "none",
                                      "--disable_tqdm", "true"])
    cli = load_cli(MLM_SCRIPT)
    monkeypatch.setitem(sys.modules, cli.__name__, cli)
    cli.main()  # no --warmup_steps: nothing trains, so no selection start is needed
    results = json.load(open(out / "all_results.json"))
    assert results["eval_samples"] == 8 and results["eval_loss"] > 0 and "train_loss" not in results
    assert not (out / "model.safetensors").exists() and not list(out.glob("checkpoint-*"))
