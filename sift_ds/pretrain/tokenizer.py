"""The run's tokenizer: a given path / hub name, or a vocabulary trained on the corpus (WordPiece
for masked LMs, byte-level BPE with an EOS token for causal LMs).

A trained vocabulary is saved with the run (``output_dir/tokenizer``) as a standard
``tokenizer.json`` + ``tokenizer_config.json`` that ``transformers.AutoTokenizer``,
``BertTokenizerFast`` and ``PreTrainedTokenizerFast`` load.
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Iterator, List

from tokenizers import BertWordPieceTokenizer, ByteLevelBPETokenizer, Tokenizer
from transformers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerFast

BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
EOS_TOKEN, PAD_TOKEN = "<|endoftext|>", "<|pad|>"  # the causal tokenizer's; padding is apart from EOS, whose
#                                                  embedding must train (an embedding's padding_idx gets no gradient)
PIECE_CHARS = 1 << 16  # longest text handed to the tokenizer at once (a fast tokenizer's encoding of
#                        one long document costs ~250x its size in memory; pieces keep it bounded)


def bounded_pieces(text: str, max_chars: int = PIECE_CHARS) -> List[str]:
    """``text`` cut into pieces of at most ``max_chars``, each cut just before a whitespace character
    (which BERT's pre-tokenizer splits on anyway, so the tokens do not change); a stretch without
    whitespace longer than ``max_chars`` is cut hard (WordPiece maps such a "word" to [UNK] anyway)."""
    if len(text) <= max_chars:
        return [text]
    pieces, start = [], 0
    while len(text) - start > max_chars:
        end = start + max_chars
        cut = max(text.rfind(" ", start + 1, end + 1), text.rfind("\n", start + 1, end + 1))
        if cut <= start:  # no space or newline: any other whitespace, else a hard cut
            cut = next((i for i in range(end, start, -1) if text[i].isspace()), end)
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def train_wordpiece(texts: Iterable[str], vocab_size: int, lowercase: bool = True, min_frequency: int = 2):
    """A BERT-style uncased WordPiece tokenizer trained on ``texts`` (a ``BertTokenizerFast``)."""
    wordpiece = BertWordPieceTokenizer(clean_text=True, lowercase=lowercase, strip_accents=lowercase)
    wordpiece.train_from_iterator(
        texts,
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(BERT_SPECIAL_TOKENS),
        show_progress=False,
    )
    return from_json(_canonical_ids(wordpiece._tokenizer.to_str()), lowercase=lowercase)


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2):
    """A GPT-2-style byte-level BPE tokenizer trained on ``texts`` (a ``PreTrainedTokenizerFast``
    whose EOS (also BOS and UNK) is ``<|endoftext|>`` and whose padding is ``<|pad|>``)."""
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=min_frequency,
                            special_tokens=[EOS_TOKEN, PAD_TOKEN], show_progress=False)
    return from_json(bpe._tokenizer.to_str(), causal=True)


def _canonical_ids(serialized: str) -> str:
    """Renumber the trained vocabulary: special tokens first (their trained ids), then the rest
    sorted. The trainer numbers tokens of equal frequency in hash-map order, which changes from
    process to process; WordPiece encoding is greedy longest-match, independent of the ids, so
    sorting makes the same vocabulary get the same ids in every run. (Frequency ties at the
    vocabulary cutoff can still make two trainings differ by a few tokens: runs that must match
    exactly share a tokenizer through --tokenizer; a resumed run reuses its own.)"""
    spec = json.loads(serialized)
    vocab = spec["model"]["vocab"]
    special = [t for t in BERT_SPECIAL_TOKENS if t in vocab]
    rest = sorted((t for t in vocab if t not in special), key=lambda t: (t.startswith("##"), t))
    spec["model"]["vocab"] = {t: i for i, t in enumerate(special + rest)}
    if [vocab[t] for t in special] != list(range(len(special))):  # pragma: no cover - trainer contract
        raise RuntimeError("the WordPiece trainer did not number the special tokens first")
    return json.dumps(spec, ensure_ascii=False)


def from_json(serialized: str, lowercase: bool = True, causal: bool = False):
    """A ``BertTokenizerFast`` (``causal``: a ``PreTrainedTokenizerFast`` with the BPE tokenizer's
    special tokens) from a serialized ``tokenizers.Tokenizer`` (how rank 0 shares it)."""
    if causal:
        return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(serialized), eos_token=EOS_TOKEN,
                                       bos_token=EOS_TOKEN, unk_token=EOS_TOKEN, pad_token=PAD_TOKEN)
    return BertTokenizerFast(tokenizer_object=Tokenizer.from_str(serialized), do_lower_case=lowercase)


def to_json(tokenizer) -> str:
    return tokenizer.backend_tokenizer.to_str()


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


def load_tokenizer(name_or_path: str, causal: bool = False):
    """A fast tokenizer from a local directory / ``tokenizer.json`` or a hub name; it must have a
    mask token (MLM) and CLS/SEP/PAD tokens (sequence packing), or for a causal LM an EOS token. No code shipped with a tokenizer
    runs (``trust_remote_code=False``). A ValueError (one line) when it is not a usable tokenizer."""
    if os.path.isdir(name_or_path) and not any(os.path.isfile(os.path.join(name_or_path, f)) for f in TOKENIZER_FILES):
        raise ValueError(f"no tokenizer in the directory (none of {', '.join(TOKENIZER_FILES)})")
    try:
        if os.path.isfile(name_or_path):
            tokenizer = PreTrainedTokenizerFast(tokenizer_file=name_or_path)
            if causal and EOS_TOKEN in tokenizer.get_vocab():
                tokenizer.add_special_tokens({"eos_token": EOS_TOKEN})
            tokenizer.add_special_tokens(
                {k: v for k, v in zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"),
                                      BERT_SPECIAL_TOKENS) if v in tokenizer.get_vocab()})
        else:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - tokenizers / transformers / json raise many kinds here
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise ValueError(f"cannot load a tokenizer from it ({type(err).__name__}: {first})") from None
    check_tokenizer(tokenizer, name_or_path, causal)
    return tokenizer


def check_tokenizer(tokenizer, name: str, causal: bool = False) -> None:
    if causal:
        if getattr(tokenizer, "eos_token_id", None) is None:
            raise ValueError(f"tokenizer {name!r} has no eos_token; causal-LM packing needs one between documents")
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"tokenizer {name!r} is not a fast (tokenizers-backed) tokenizer")
        return
    missing = [t for t in ("mask_token", "cls_token", "sep_token", "pad_token") if getattr(tokenizer, t, None) is None]
    if missing:
        raise ValueError(f"tokenizer {name!r} has no {', '.join(missing)}; BERT pretraining needs [MASK], [CLS], [SEP], [PAD]")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"tokenizer {name!r} is not a fast (tokenizers-backed) tokenizer")


def batched_texts(dataset, column: str = "text", batch_size: int = 1000) -> Iterator[list]:
    """The text column of a ``datasets.Dataset`` in batches (what ``train_from_iterator`` streams),
    long documents in ``bounded_pieces``."""
    for start in range(0, len(dataset), batch_size):
        yield [piece for text in dataset[start : start + batch_size][column] for piece in bounded_pieces(text)]
