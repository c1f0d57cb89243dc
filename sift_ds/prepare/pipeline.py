"""A preparation, start to finish: the source and its tokenizer, ``settings.json`` (checked against a
previous start in the same directory), the shards (by N worker processes; finished ones are kept, so
an interrupted preparation resumes shard by shard), then ``manifest.json``. Running it again over a
finished directory changes nothing."""
from __future__ import annotations

import glob
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from ..pretrain.data import MIN_SEQ_LEN, OBJECTIVES, PACK_BATCH
from ..shards.layout import FORMAT, MANIFEST, SETTINGS, TMP, TOKENIZER_DIR, atomic_json, read_json, versions
from .shard import Packing, finished_record, write_shard
from .source_setup import open_source

logger = logging.getLogger("sift_ds.prepare")
DETERMINING = ("format", "objective", "seq_len", "data_seed", "tokenizer_sha256", "corpus_sha256", "sample_by",
               "text_field", "max_document_chars", "documents_per_shard", "num_documents", "dtype")


@dataclass(frozen=True)
class Request:
    """What ``launch/prepare_data.py`` was asked for (its flags)."""

    out: str
    data: Optional[List[str]] = None
    text_field: str = "text"
    sample_by: str = "paragraph"
    dataset_name: Optional[str] = None
    dataset_config: Optional[str] = None
    dataset_split: str = "train"
    megatron_prefix: Optional[List[str]] = None
    cache_dir: Optional[str] = None
    tokenizer: Optional[str] = None
    vocab_size: int = 30522
    seq_len: int = 128
    objective: str = "mlm"
    data_seed: int = 0
    workers: int = 1
    documents_per_shard: int = 2 * PACK_BATCH
    max_document_chars: int = 1 << 26

    def check(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"--objective must be one of {list(OBJECTIVES)}, got {self.objective!r}")
        if self.seq_len < MIN_SEQ_LEN:
            raise ValueError(f"--seq_len {self.seq_len} is too short (at least {MIN_SEQ_LEN})")
        if self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")
        if self.documents_per_shard < PACK_BATCH or self.documents_per_shard % PACK_BATCH:
            raise ValueError(f"--documents_per_shard must be a positive multiple of {PACK_BATCH} (the packing batch: "
                             f"a shard holds whole batches), got {self.documents_per_shard}")
        if self.max_document_chars < 0:
            raise ValueError(f"--max_document_chars must be >= 0 (0: no limit), got {self.max_document_chars}")
        if sum(bool(x) for x in (self.data, self.dataset_name, self.megatron_prefix)) > 1:
            raise ValueError("give one of --data, --dataset_name and --megatron_prefix")
        if self.megatron_prefix and not self.tokenizer:
            raise ValueError("--megatron_prefix needs --tokenizer: the tokenizer the indexed dataset was made with")


def check_out_dir(out: str) -> Optional[Dict[str, Any]]:
    """The settings of a previous preparation in ``out``; None for a new or empty directory; a
    ValueError for a directory that holds something else."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out}: not a directory")
    settings = read_json(os.path.join(out, SETTINGS), "--out")
    if settings is None and os.path.isdir(out) and set(os.listdir(out)) - {TOKENIZER_DIR, TOKENIZER_DIR + TMP}:
        raise ValueError(f"--out {out}: not empty and not a preparation (no {SETTINGS}): give a new directory")
    if settings is not None and settings.get("format") != FORMAT:
        raise ValueError(f"--out {out}: prepared in another format ({settings.get('format')!r}, this is {FORMAT!r})")
    return settings


def same_settings(previous: Dict[str, Any], current: Dict[str, Any], out: str) -> None:
    for key in DETERMINING:
        if previous.get(key) != current.get(key):
            raise ValueError(f"--out {out} holds a preparation with {key} {previous.get(key)!r}, this command asks for "
                             f"{current.get(key)!r}: use another --out (or delete it to prepare again)")


def prepare(request: Request) -> Dict[str, Any]:
    """Prepare ``request.out`` (or finish it); its manifest."""
    request.check()
    previous = check_out_dir(request.out)
    os.makedirs(request.out, exist_ok=True)
    source, tokenizer, settings = open_source(request, previous)
    if previous is not None:
        same_settings(previous, settings, request.out)
    existing = read_json(os.path.join(request.out, MANIFEST), "manifest")
    tasks = shard_tasks(len(source), request.documents_per_shard)
    done = {i: finished_record(request.out, i) for i, _, _ in tasks}
    if existing is not None and all(done.values()):
        logger.info("%s: already prepared (%d blocks); nothing to do", request.out, existing.get("num_blocks", 0))
        return existing
    if previous is None:
        atomic_json(os.path.join(request.out, SETTINGS), settings)
    for stale in glob.glob(os.path.join(glob.escape(request.out), "*" + TMP)):
        os.remove(stale)  # a killed writer's
    todo = [t for t in tasks if not done[t[0]]]
    logger.info("%s: %d documents in %d shards, %d to prepare, %d worker(s)", request.out, len(source), len(tasks),
                len(todo), request.workers)
    packing = Packing(settings["objective"], settings["seq_len"], *settings["special_ids"], settings["data_seed"] or 0,
                      settings["dtype"])
    for record in run_shards(request, todo, source, tokenizer, packing):
        done[record["shard"]] = record
    return write_manifest(request.out, settings, [done[i] for i, _, _ in tasks])


def shard_tasks(num_documents: int, per_shard: int) -> List[Tuple[int, int, int]]:
    return [(i, start, min(num_documents, start + per_shard))
            for i, start in enumerate(range(0, num_documents, per_shard))]


_WORKER: Dict[str, Any] = {}  # the worker process's source, tokenizer and packing (set by _init)


def _init(out, source, tokenizer, packing) -> None:
    _WORKER.update(out=out, source=source, tokenizer=tokenizer, packing=packing)


def _shard(task: Tuple[int, int, int]) -> Dict[str, Any]:
    w = _WORKER
    return write_shard(w["out"], *task, w["source"], w["tokenizer"], w["packing"])


def run_shards(request: Request, todo, source, tokenizer, packing):
    """The records of the shards ``todo``, in the order they finish (in this process with one worker)."""
    started, tokens = time.perf_counter(), 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core per worker
    _init(request.out, source, tokenizer, packing)
    if request.workers == 1 or len(todo) <= 1:
        records = map(_shard, todo)
        pool = None
    else:
        pool = multiprocessing.get_context("fork").Pool(min(request.workers, len(todo)), _init,
                                                         (request.out, source, tokenizer, packing))
        records = pool.imap_unordered(_shard, todo)
    try:
        for count, record in enumerate(records, 1):
            tokens += record["tokens"]
            elapsed = time.perf_counter() - started
            logger.info("shard %d done (%d/%d): %d blocks; %.0f tokens/s", record["shard"], count, len(todo),
                        record["blocks"], tokens / max(elapsed, 1e-9))
            yield record
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def write_manifest(out: str, settings: Dict[str, Any], records: List[Dict[str, Any]]) -> Dict[str, Any]:
    blocks = sum(r["blocks"] for r in records)
    if blocks < 2:
        raise ValueError(f"empty corpus: it packs into {blocks} block(s) of --seq_len {settings['seq_len']}; at least "
                         "2 are needed (train + validation)")
    skipped = sum(r["skipped_long_documents"] for r in records)
    if skipped:
        logger.warning("skipped %d document(s) longer than --max_document_chars %d characters", skipped,
                       settings["max_document_chars"])
    manifest = {**settings, "shards": records, "num_blocks": blocks, "num_tokens": sum(r["tokens"] for r in records),
                "skipped_long_documents": skipped, "written_by": versions()}
    atomic_json(os.path.join(out, MANIFEST), manifest)
    logger.info("%s: %d documents, %d tokens -> %d blocks of %d tokens (%s)", out, settings["num_documents"],
                manifest["num_tokens"], blocks, settings["seq_len"], settings["objective"])
    return manifest
