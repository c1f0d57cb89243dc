"""The online reference model of criterion ``reducible`` checked against the run before step 1: its
vocabulary must be the run's (another size means another tokenizer: a larger one scores other
tokens, a smaller one fails with an index error at the first selection), its positions must cover
``--seq_len``, and a reference trained on this run's own training blocks is a warning (its loss on
them is no held-out estimate). The reference's run record is ``RUN_RECORD`` in its directory, which
the pretraining job writes next to its final model."""
from __future__ import annotations

import os
from typing import List, Optional

from transformers import AutoConfig

from ..config import SiftConfig
from ..score_file import vocab_digest
from ..criteria.reducible import is_online
from .manifest import read_json_object
from .models import max_sequence_length
from .tokenizer import TOKENIZER_FILES, load_tokenizer

RUN_RECORD = "sift_run.json"  # the run facts of the model in this directory (its corpus, split, settings)
SAME_BLOCKS_KEYS = ("seq_len", "objective", "data_seed", "vocab_size")


def online_reference(sift: SiftConfig) -> bool:
    """Criterion reducible with a reference model directory (an online reference)."""
    return sift.criterion == "reducible" and is_online(sift.options)


def check_reference_model(sift: SiftConfig, seq_len: int, tokenizer=None) -> None:
    """ValueError (one line naming ``sift.reducible.reference``) for a reference whose positions do not cover
    ``seq_len`` or whose vocabulary differs from ``tokenizer``'s (skipped without one)."""
    if not online_reference(sift):
        return
    reference = sift.options.reference
    where = f"sift.reducible.reference {reference}"
    try:
        config = AutoConfig.from_pretrained(reference, trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - transformers raises many kinds for a directory that is no model
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise ValueError(f"{where}: not a Hugging Face model directory ({type(err).__name__}: {first})") from None
    positions = max_sequence_length(config)
    if positions < seq_len:
        raise ValueError(f"{where}: the reference model covers {positions} positions, fewer than --seq_len {seq_len}")
    if tokenizer is None:
        return
    if config.vocab_size != len(tokenizer):
        raise ValueError(f"{where}: the reference model has a vocabulary of {config.vocab_size} tokens, this run's "
                         f"tokenizer {len(tokenizer)}: it was trained with another tokenizer (give the run the "
                         "reference's --tokenizer, or train the reference with the run's)")
    if any(os.path.isfile(os.path.join(reference, f)) for f in TOKENIZER_FILES):
        try:
            own = load_tokenizer(reference)
        except ValueError:
            return
        if vocab_digest(own) != vocab_digest(tokenizer):
            raise ValueError(f"{where}: the reference model's tokenizer has the run's vocabulary size but other "
                             "tokens: it was trained with another tokenizer")


def reference_record(path: str) -> Optional[dict]:
    """The run record saved with a model directory (None without one)."""
    return read_json_object(os.path.join(path, RUN_RECORD))


def same_blocks_warnings(sift: SiftConfig, run_info: dict) -> List[str]:
    """A warning when the reference was trained on blocks this run trains on: the same corpus and
    split, unless the two runs train on the two shares of one holdout split."""
    if not online_reference(sift):
        return []
    ref = reference_record(sift.options.reference)
    if not ref or not isinstance(ref.get("corpus"), dict) or not isinstance(ref.get("training"), dict):
        return []
    mine, theirs = run_info.get("training") or {}, ref["training"]
    same_corpus = ref["corpus"].get("sha256") == (run_info.get("corpus") or {}).get("sha256")
    same_split = all(ref.get(k) == run_info.get(k) for k in SAME_BLOCKS_KEYS) and all(
        theirs.get(k) == mine.get(k) for k in ("text_field", "val_fraction", "max_val_samples"))
    apart = bool(theirs.get("holdout_fraction")) and theirs.get("holdout_fraction") == mine.get("holdout_fraction") \
        and theirs.get("train_on") != mine.get("train_on")  # the two shares of one holdout split
    overlap = not apart
    if not (same_corpus and same_split and overlap):
        return []
    return [f"sift.reducible.reference {sift.options.reference} was trained on blocks this run trains on (the same corpus and split, "
            f"--holdout_fraction {theirs.get('holdout_fraction')} --train_on {theirs.get('train_on')}): its loss on them is no held-out estimate, and the reducible "
            "loss then favours what the reference memorised; train it with --holdout_fraction F --train_on holdout "
            "and this run with the same --holdout_fraction (--train_on rest)"]
