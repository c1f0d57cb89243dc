"""The documents, the tokenizer and the settings of a preparation, before any shard is written.

The corpus is read as the training job reads it (``load_corpus``), its identity recorded as the job
records it (``run_record.corpus_record``), so that a run from the prepared blocks and a run that
tokenizes the same corpus in process share one corpus identity. Empty files are skipped (counted in
the log); a tokenizer is given (``--tokenizer``), the previous start's (a resumed preparation keeps
it), or trained on the corpus once; it is saved in ``OUT/tokenizer`` and read back from there.
"""
from __future__ import annotations

import logging
import os
import shutil
from typing import Any, Dict, Optional, Tuple

from ..pretrain import tokenizer as tok
from ..pretrain.corpus import check_compression, check_not_empty, load_corpus, resolve_data_files
from ..pretrain.options import PretrainOptions
from ..pretrain.run_record import corpus_record
from ..pretrain.vocab_check import check_vocabulary, first_texts
from ..content_digest import data_digest
from ..shards.layout import FORMAT, TMP, TOKENIZER_DIR, token_dtype, tokenizer_digest
from .sources import MegatronSource, TextSource

logger = logging.getLogger("sift_ds.prepare")


def open_source(request, previous: Optional[Dict[str, Any]]) -> Tuple[Any, Any, Dict[str, Any]]:
    """(source, tokenizer, settings) of ``request`` (a ``pipeline.Request``)."""
    causal = request.objective == "clm"
    known = (previous or {}).get("corpus")
    if request.megatron_prefix:
        tokenizer = given_tokenizer(request.tokenizer, causal)
        end = tokenizer.eos_token_id if causal else tokenizer.sep_token_id
        source = MegatronSource(request.megatron_prefix, end, len(tokenizer))
        files = source.files()
        stats = [[os.path.abspath(p), os.path.getsize(p), os.stat(p).st_mtime_ns] for p in files]
        corpus = known if known and known.get("files") == stats else \
            {"sha256": data_digest(files), "source": "--megatron_prefix " + " ".join(source.prefixes), "files": stats}
    else:
        files = check_compression(check_not_empty(resolve_data_files(request.data))) if request.data else None
        empty = [f for f in files or () if os.path.getsize(f) == 0]
        if empty:
            logger.warning("skipped %d empty file(s): %s", len(empty), ", ".join(empty))
        texts = load_corpus([f for f in files if f not in empty] if files else None, request.text_field,
                            request.dataset_name, request.dataset_config, request.dataset_split, request.cache_dir,
                            request.sample_by)
        source = TextSource(texts, request.max_document_chars)
        options = PretrainOptions(data=request.data, text_field=request.text_field, sample_by=request.sample_by,
                                  dataset_name=request.dataset_name, dataset_config=request.dataset_config,
                                  dataset_split=request.dataset_split)
        corpus = corpus_record(options, files, known)
        tokenizer = corpus_tokenizer(request, texts)
    tokenizer = saved_tokenizer(tokenizer, request.out, causal)
    settings = {
        "format": FORMAT, "objective": request.objective, "seq_len": request.seq_len,
        "data_seed": request.data_seed if request.objective == "mlm+nsp" else None,
        "tokenizer_sha256": tokenizer_digest(tokenizer), "vocab_size": len(tokenizer),
        "tokenizer_source": request.tokenizer or "trained on the corpus",
        "special_ids": [tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id],
        "dtype": token_dtype(len(tokenizer)).name, "corpus": corpus, "corpus_sha256": corpus["sha256"],
        "sample_by": None if request.megatron_prefix else request.sample_by,
        "text_field": None if request.megatron_prefix else request.text_field,
        "max_document_chars": 0 if request.megatron_prefix else request.max_document_chars,
        "documents_per_shard": request.documents_per_shard, "num_documents": len(source),
    }
    return source, tokenizer, settings


def given_tokenizer(name: str, causal: bool):
    try:
        return tok.load_tokenizer(name, causal)
    except ValueError as err:
        raise ValueError(f"--tokenizer {name}: {err}") from None


def corpus_tokenizer(request, texts):
    """--tokenizer (checked against the corpus's first texts), the previous start's, or a new one."""
    causal = request.objective == "clm"
    if request.tokenizer:
        tokenizer = given_tokenizer(request.tokenizer, causal)
        try:
            check_vocabulary(tokenizer, first_texts(row["text"] for row in texts))
        except ValueError as err:
            raise ValueError(f"--tokenizer {request.tokenizer}: {err}") from None
        return tokenizer
    saved = os.path.join(request.out, TOKENIZER_DIR)
    if os.path.isdir(saved):  # a previous start's (trained once)
        return given_tokenizer(saved, causal)
    if len(texts) == 0:
        raise ValueError("empty corpus: the data source holds no documents")
    kind = "byte-level BPE" if causal else "WordPiece"
    logger.info("training a %s vocabulary of %d tokens on the corpus", kind, request.vocab_size)
    train = tok.train_bpe if causal else tok.train_wordpiece
    return tok.from_json(tok.to_json(train(tok.batched_texts(texts), request.vocab_size)), causal=causal)


def saved_tokenizer(tokenizer, out: str, causal: bool):
    """The tokenizer as saved in ``OUT/tokenizer`` (saved there first when it is not), read back."""
    path = os.path.join(out, TOKENIZER_DIR)
    if not os.path.isdir(path):
        tmp = path + TMP
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, path)
    saved = given_tokenizer(path, causal)
    if tokenizer_digest(saved) != tokenizer_digest(tokenizer):
        raise ValueError(f"--out {out}: its {TOKENIZER_DIR}/ is another tokenizer than this command's: use another "
                         "--out (or delete it to prepare again)")
    return saved
