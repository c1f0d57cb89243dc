"""A tokenizer that cannot encode the corpus is refused at start-up and by ``--check_only``, one
line: a directory holding only ``tokenizer_config.json`` (which loads as the 5 special tokens and
trained as a 0.1 M-parameter model, exit status 0), and a real vocabulary of another text, which
encodes the corpus as mostly [UNK]. The floor and the threshold are ``vocab_check``'s."""
import os
import shutil

import pytest
from transformers import BertTokenizerFast

from launch_helpers import config_file, load_cli, one_line_error
from launcher import REPO
from sift_ds.pretrain.tokenizer import load_tokenizer
from sift_ds.pretrain.vocab_check import MAX_UNK_SHARE, MIN_VOCAB, corpus_sample, unk_share

cli = load_cli()
SHIPPED = os.path.join(REPO, "ds_configs", "tokenizers", "pydoc_wordpiece_4096")


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)


def config_only(tmp_path):
    folder = tmp_path / "config_only"
    folder.mkdir()
    shutil.copy(os.path.join(SHIPPED, "tokenizer_config.json"), folder)
    return str(folder)


def foreign(tmp_path):
    """A WordPiece vocabulary of 300 made-up words: it spells none of the corpus's English."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"zq{i}" for i in range(295)]
    folder = tmp_path / "foreign"
    BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}).save_pretrained(str(folder))
    return str(folder)


@pytest.mark.parametrize("check_only", [False, True], ids=["start-up", "check_only"])
@pytest.mark.parametrize("make,message", [
    (config_only, f"a vocabulary of 5 tokens, fewer than {MIN_VOCAB}: its vocabulary file"),
    (foreign, "it encodes 100% of a sample of the corpus (131072 characters) as [UNK] (more than 50%)"),
], ids=["no_vocabulary", "another_texts_vocabulary"])
def test_a_tokenizer_that_cannot_encode_the_corpus_is_refused(tmp_path, capsys, make, message, check_only):
    tokenizer = make(tmp_path)
    argv = ["--ds_config", config_file(tmp_path), "--tokenizer", tokenizer, "--output_dir", str(tmp_path / "o")]
    err = one_line_error(capsys, argv + (["--check_only"] if check_only else []))
    assert err.startswith(f"pretrain_bert.py: error: --tokenizer {tokenizer}: {message}"), err
    assert not (tmp_path / "o").exists()


def test_the_unknown_share_is_measured_on_the_corpus_sample():
    sample = corpus_sample(None)
    assert sum(map(len, sample)) == 131072
    shipped = load_tokenizer(SHIPPED)
    assert unk_share(shipped, sample) < 0.01  # the corpus's own vocabulary: passes with a wide margin
    assert unk_share(shipped, ["zq zq [x]"]) == pytest.approx(0.0)  # each piece of 'zq' is in a 4096 vocabulary
    tiny = BertTokenizerFast(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"])})
    assert unk_share(tiny, ["a b a c"]) == pytest.approx(0.5) and not 0.5 > MAX_UNK_SHARE  # at the line: kept
