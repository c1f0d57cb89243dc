"""Pretraining data at scale, measured (docs/benchmarks.md, "Preparing a large corpus"):

    python benchmarks/prepare_scale.py corpus --source debian_docs.jsonl.xz --mb 100 --out c100.jsonl
    python benchmarks/prepare_scale.py tokenizer --source debian_docs.jsonl.xz --out tok/
    python benchmarks/prepare_scale.py prepare --data c100.jsonl --tokenizer tok/ --workers 1 2 --out prep/
    python benchmarks/prepare_scale.py start --prepared prep/w2 --out runs/
    python benchmarks/prepare_scale.py loader --prepared prep/w2

* ``corpus``: a JSON-lines corpus of at least ``--mb`` MB of text, the source's documents repeated
  (each copy with its own id) when the source holds less;
* ``tokenizer``: a BERT-size (30,522) WordPiece vocabulary trained on the source, once;
* ``prepare``: ``launch/prepare_data.py`` with each ``--workers`` count, wall time and MB of text per
  second (the text's UTF-8 bytes; the corpus read, tokenized, packed and written), over the whole
  command and over its shard phase (from its log), and the CPU seconds of the command and its workers;
* ``start``: ``deepspeed --num_gpus 2 launch/pretrain_bert.py --prepared`` (tiny model, seq 128, two
  steps) on the CPU: seconds from the launch to the first optimizer step (the ``time`` of metrics.jsonl's
  step-1 record) and each rank's peak RSS (``VmHWM``) and largest anonymous RSS (polled); with ``--cold``
  the prepared files are dropped from the page cache before each start; the first start builds
  DeepSpeed's op and is not counted;
* ``loader``: the job's data start-up from the prepared blocks in process (open, validation split,
  masked validation batches, the loader's first batch: what could grow with the corpus), then rows per
  second of ``GrossBatchLoader``, masking included, one process, no prefetch thread.

Every result is one JSON line on stdout, with the date, the machine's load (``os.getloadavg``) and the
versions.
"""
from __future__ import annotations

import argparse
import json
import lzma
import os
import platform
import resource
import shutil
import subprocess
import sys
import time

from sift_ds.ports import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "ds_configs", "tiny_cpu_sift.json")


def stamp(**result) -> None:
    import importlib.metadata as md
    versions = {name: md.version(name) for name in ("torch", "deepspeed", "transformers", "datasets", "tokenizers", "numpy")}
    print(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M:%S%z"), "load_1_5_15": os.getloadavg(),
                      "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
                      "python": platform.python_version(), "versions": versions, **result}), flush=True)


def source_documents(path: str):
    with (lzma.open if path.endswith(".xz") else open)(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def corpus(args) -> None:
    docs = source_documents(args.source)
    target, written, copies, count = args.mb * 1e6, 0, 0, 0
    with open(args.out, "w", encoding="utf-8") as f:
        while written < target:
            for doc in docs:
                f.write(json.dumps({"id": f"{doc['id']}#{copies}", "text": doc["text"]}) + "\n")
                written, count = written + len(doc["text"].encode()), count + 1
                if written >= target:
                    break
            copies += 1
    stamp(step="corpus", out=args.out, text_mb=round(written / 1e6, 1), file_mb=round(os.path.getsize(args.out) / 1e6, 1),
          documents=count, source_documents=len(docs), copies_of_the_source=round(count / len(docs), 2))


def tokenizer(args) -> None:
    from sift_ds.pretrain.tokenizer import bounded_pieces, train_wordpiece
    texts = [doc["text"] for doc in source_documents(args.source)]
    started = time.perf_counter()
    train_wordpiece(([p for t in texts[i:i + 1000] for p in bounded_pieces(t)] for i in range(0, len(texts), 1000)),
                    args.vocab_size).save_pretrained(args.out)
    stamp(step="tokenizer", out=args.out, seconds=round(time.perf_counter() - started, 1))


def text_mb(path: str) -> float:
    with open(path, encoding="utf-8") as f:
        return sum(len(json.loads(line)["text"].encode()) for line in f if line.strip()) / 1e6


def prepare(args) -> None:
    mb = text_mb(args.data)
    for workers in args.workers:
        out = os.path.join(args.out, f"w{workers}")
        shutil.rmtree(out, ignore_errors=True)
        cache = os.path.join(args.cache_dir, f"w{workers}")
        shutil.rmtree(cache, ignore_errors=True)  # each run reads the corpus from its JSON lines
        started, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run([sys.executable, os.path.join(REPO, "launch", "prepare_data.py"), "--data", args.data,
                               "--tokenizer", args.tokenizer, "--seq_len", "128", "--workers", str(workers),
                               "--documents_per_shard", str(args.documents_per_shard), "--cache_dir", cache,
                               "--out", out], stderr=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_seconds = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime  # the command and its workers
        if proc.returncode:
            raise SystemExit(proc.stderr[-3000:])
        shards = shard_phase_seconds(proc.stderr)
        with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
            manifest = json.load(f)
        stamp(step="prepare", data=args.data, text_mb=round(mb, 1), workers=workers, seconds=round(seconds, 1),
              mb_per_s=round(mb / seconds, 2), cpu_seconds=round(cpu_seconds, 1), shard_phase_seconds=shards, shard_phase_mb_per_s=round(mb / shards, 2),
              blocks=manifest["num_blocks"], tokens=manifest["num_tokens"],
              shards=len(manifest["shards"]), prepared_mb=round(sum(
                  m["size"] for s in manifest["shards"] for m in s["files"].values()) / 1e6, 1))


def shard_phase_seconds(log: str) -> float:
    """Seconds from the log line that starts the shards to the manifest's (whole-second timestamps)."""
    def seconds(line: str) -> int:
        h, m, s = map(int, line[1:9].split(":"))
        return 3600 * h + 60 * m + s
    lines = log.splitlines()
    begin = next(line for line in lines if " to prepare, " in line)
    end = next(line for line in lines if " tokens -> " in line)
    return max(1, (seconds(end) - seconds(begin)) % 86400)


def evict(prepared: str) -> None:
    """Drop the prepared files from the page cache (``POSIX_FADV_DONTNEED``), as on a node that has not
    read them: pages written or read before are large folios, and a mapped row then maps a whole folio."""
    for name in os.listdir(prepared):
        if name.endswith(".npy"):
            fd = os.open(os.path.join(prepared, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def rank_peaks(peaks: dict, output_dir: str) -> None:
    """Update ``peaks`` {pid: [VmHWM kB, largest RssAnon kB seen]} for the live ranks of the run in
    ``output_dir``."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace").split("\0")
            if "--local_rank" not in " ".join(cmd) or output_dir not in cmd:
                continue
            with open(f"/proc/{pid}/status", encoding="utf-8") as f:
                status = {line.split(":")[0]: line.split()[1] for line in f if line.startswith(("VmHWM", "RssAnon"))}
            old = peaks.get(pid, [0, 0])
            peaks[pid] = [max(old[0], int(status["VmHWM"])), max(old[1], int(status["RssAnon"]))]
        except (OSError, StopIteration):
            continue


def start(args) -> None:
    env = dict(os.environ, DS_ACCELERATOR="cpu", TORCH_EXTENSIONS_DIR=args.extensions)
    for attempt in range(args.repeat + 1):  # the first start builds DeepSpeed's op (once per machine)
        out = os.path.join(args.out, f"start{attempt}")
        shutil.rmtree(out, ignore_errors=True)
        command = [os.path.join(os.path.dirname(sys.executable), "deepspeed"), "--num_gpus", "2", "--master_port",
                   str(free_port()), os.path.join(REPO, "launch", "pretrain_bert.py"), "--ds_config",
                   CONFIG, "--prepared", args.prepared, "--max_steps", "2", "--lr_warmup_steps", "1",
                   "--eval_interval", "0", "--save_interval", "0", "--output_dir", out]
        peaks: dict = {}
        if args.cold:
            evict(args.prepared)
        launched = time.time()
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while proc.poll() is None:
            rank_peaks(peaks, out)
            time.sleep(0.1)
        if proc.returncode:
            raise SystemExit(proc.stderr.read()[-3000:])
        with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
            first = json.loads(f.readline())
        if attempt:
            stamp(step="start", prepared=args.prepared, cold=args.cold,
                  seconds_to_first_step=round(first["time"] - launched, 1),
                  peak_rss_mb_per_rank=sorted(round(v[0] / 1024) for v in peaks.values()),
                  peak_anonymous_mb_per_rank=sorted(round(v[1] / 1024) for v in peaks.values()))


def loader(args) -> None:
    from sift_ds.shards.blocks import open_prepared
    from sift_ds.pretrain.data import split_blocks
    from sift_ds.pretrain.loader import GrossBatchLoader, MaskingCollator, fixed_eval_batches
    from sift_ds.pretrain.tokenizer import load_tokenizer
    collator = MaskingCollator(load_tokenizer(os.path.join(args.prepared, "tokenizer")))
    opened = time.perf_counter()
    _, blocks = open_prepared(args.prepared)
    train, val = split_blocks(blocks, 0.05, 2000, 0)
    fixed_eval_batches(val, collator, 16)
    batches = GrossBatchLoader(train, collator, args.batch, prefetch=False)
    batches.next_batch()
    data_seconds = time.perf_counter() - opened
    started = time.perf_counter()
    for _ in range(args.batches):
        batches.next_batch()
    seconds = time.perf_counter() - started
    stamp(step="loader", prepared=args.prepared, blocks=len(blocks), rows_per_batch=args.batch,
          seq_len=blocks.manifest["seq_len"], rows_per_s=round(args.batch * args.batches / seconds),
          open_split_first_batch_seconds=round(data_seconds, 3))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="step", required=True)
    c = sub.add_parser("corpus")
    c.add_argument("--source", required=True)
    c.add_argument("--mb", type=float, required=True)
    c.add_argument("--out", required=True)
    t = sub.add_parser("tokenizer")
    t.add_argument("--source", required=True)
    t.add_argument("--vocab_size", type=int, default=30522)
    t.add_argument("--out", required=True)
    r = sub.add_parser("prepare")
    r.add_argument("--data", required=True)
    r.add_argument("--tokenizer", required=True)
    r.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    r.add_argument("--documents_per_shard", type=int, default=1000)
    r.add_argument("--cache_dir", default=os.path.join(os.path.expanduser("~"), ".cache", "sift_ds_bench"))
    r.add_argument("--out", required=True)
    s = sub.add_parser("start")
    s.add_argument("--prepared", required=True)
    s.add_argument("--repeat", type=int, default=1)
    s.add_argument("--cold", action="store_true", help="drop the prepared files from the page cache first")
    s.add_argument("--extensions", default=os.path.join(REPO, ".venv", "torch_extensions"))
    s.add_argument("--out", required=True)
    lo = sub.add_parser("loader")
    lo.add_argument("--prepared", required=True)
    lo.add_argument("--batch", type=int, default=256)
    lo.add_argument("--batches", type=int, default=40)
    args = p.parse_args()
    {"corpus": corpus, "tokenizer": tokenizer, "prepare": prepare, "start": start, "loader": loader}[args.step](args)


if __name__ == "__main__":
    main()
