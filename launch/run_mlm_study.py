#!/usr/bin/env python
"""How much sooner than ``run_mlm.py``? The end-to-end study: budget-matched wall-clock to equal
validation loss and accuracy, every arm against ``run_mlm.py``'s frontier (sift_ds.study.run_mlm_arms).

    python launch/run_mlm_study.py --ds_config ds_configs/l12h128_cpu_study.json \\
        --data ../shared/data/linux_docs.jsonl.xz --budgets 400,600,900 --steps 600 --seeds 3 \\
        --pin_cores 0,1 --work runs/run_mlm_l12h128 --out docs/results/run_mlm_l12h128

The ds_config's "pretrain" section gives the model, sequence length and vocabulary size, and its
optimizer, scheduler and batch are every arm's (run_mlm.py gets the same as flags). The study first
holds out 5% of the documents (sift_ds.study.fixed_eval), trains the WordPiece tokenizer and prepares
the blocks on the rest; then it runs every arm x seed, seed-major (each seed in another order of arms,
so that neighbours change; run_mlm_arms.study_plan), each on a core of its own, and
scores every final model on the same held-out blocks with the same masks. --work keeps the data,
models and logs; --out gets each run's result.json, metrics and log (without this machine's paths),
run_mlm_study.json and results.md / results.csv.
A run that finished is skipped when the command is run again; an unfinished one starts over.
While a file WORK/PAUSE exists no new run starts (so that other work on the machine leaves the
timed runs alone). --analyze_only rewrites the report from --out.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Tuple

PROG = "run_mlm_study.py"
HELD_SHARE = 0.05
EVAL_BLOCKS = 1000


def fail(message: str, status: int = 2):
    sys.stderr.write(f"{PROG}: error: {' '.join(str(message).split())}\n")
    raise SystemExit(status)


def say(message: str) -> None:
    sys.stdout.write(f"{PROG}: {message}\n")
    sys.stdout.flush()


def int_list(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ds_config", help="the pretraining job's ds_config (model, data shape, optimizer, schedule)")
    p.add_argument("--data", help="JSON-lines corpus (optionally .xz), one document per line")
    p.add_argument("--vocab_size", type=int, help="the WordPiece vocabulary (default: the ds_config's pretrain.vocab_size)")
    p.add_argument("--budgets", type=int_list, default=[400, 600, 900], help="run_mlm.py's frontier, in steps")
    p.add_argument("--steps", type=int, default=600, help="the arms' budget in steps")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    p.add_argument("--sift", default='{"criterion": "entropy", "exit_layer": 1, "keep_ratio": 0.5, '
                                     '"selection_start_step": 30, "anneal_start_step": 0, "anneal_end_step": 0}',
                   help="the SIFT arms' settings (a JSON object of sift keys)")
    p.add_argument("--only", help="run these arms only (comma-separated labels), e.g. to time two arms side by side")
    p.add_argument("--pin_cores", type=int_list, default=[], help="one core per run, len(cores) runs at a time")
    p.add_argument("--work", default="runs/run_mlm_study", help="data, models and logs")
    p.add_argument("--out", default="runs/run_mlm_study/report", help="results and each run's small files")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the intervals")
    p.add_argument("--analyze_only", action="store_true", help="no runs: rewrite the report from --out")
    p.add_argument("--evaluate", nargs=3, metavar=("MODEL", "EVAL_SET", "RESULT"), help=argparse.SUPPRESS)
    return p


# ----------------------------------------------------------------------------- preparation
def prepare(args, section: dict) -> Tuple[str, str, str, str]:
    """(train JSON lines, prepared dir, tokenizer dir, evaluation set .npz) in --work, made once."""
    import numpy as np
    from sift_ds.pretrain.tokenizer import load_tokenizer
    from sift_ds.study import fixed_eval

    data = os.path.join(args.work, "data")
    train_file = os.path.join(data, "train.json")
    held_file = os.path.join(data, "held_out.json")
    if not os.path.exists(held_file):
        os.makedirs(data, exist_ok=True)
        train, held = fixed_eval.split_documents(list(fixed_eval.read_documents(args.data)), HELD_SHARE)
        for path, texts in ((train_file, train), (held_file, held)):
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
            os.replace(path + ".tmp", path)
        say(f"{len(train)} training and {len(held)} held-out documents in {data}")
    prepared = os.path.join(args.work, "prepared")
    if not os.path.exists(os.path.join(prepared, "manifest.json")):
        cmd = [sys.executable, os.path.join(os.path.dirname(__file__), "prepare_data.py"), "--data", train_file,
               "--vocab_size", str(section["vocab_size"]), "--seq_len", str(section["seq_len"]), "--objective", "mlm",
               "--out", prepared]
        say("preparing the training blocks and the tokenizer: " + " ".join(cmd))
        subprocess.run(cmd, check=True)
    tokenizer_dir = os.path.join(prepared, "tokenizer")
    eval_set = os.path.join(data, "eval_set.npz")
    if not os.path.exists(eval_set):
        tokenizer = load_tokenizer(tokenizer_dir)
        blocks = fixed_eval.evaluation_blocks(fixed_eval.read_documents(held_file), tokenizer, section["seq_len"],
                                              EVAL_BLOCKS)
        inputs, labels = fixed_eval.fixed_masks(blocks, tokenizer.mask_token_id, len(tokenizer))
        np.savez(eval_set + ".tmp.npz", inputs=inputs, labels=labels)
        os.replace(eval_set + ".tmp.npz", eval_set)
        say(f"evaluation set: {len(inputs)} blocks, {int((labels != -100).sum())} target tokens")
    return train_file, prepared, tokenizer_dir, eval_set


def evaluate_main(model_dir: str, eval_set: str, result: str) -> None:
    """The hidden --evaluate mode: one final model on the fixed evaluation set, as JSON."""
    import numpy as np
    import torch
    from transformers import AutoModelForMaskedLM
    from sift_ds.study import fixed_eval

    torch.set_num_threads(1)
    model = AutoModelForMaskedLM.from_pretrained(model_dir, dtype=torch.float32)
    arrays = np.load(eval_set)
    scores = fixed_eval.evaluate(model, arrays["inputs"], arrays["labels"])
    with open(result, "w", encoding="utf-8") as f:
        json.dump(scores, f, indent=1)


# ----------------------------------------------------------------------------- runs
def portable(text: str, args) -> str:
    """``text`` without this machine's paths: the corpus as <data>, --work as <work>, the checkout's
    files relative to it, anything else <path> (``sift_ds.study.identity.relocate``)."""
    from sift_ds.study.identity import relocate

    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data = [os.path.abspath(args.data)] if args.data else []
    return relocate(text, os.path.abspath(args.work), checkout, data).replace("<out>", "<work>")


def keep_small_files(arm, run_dir: str, out_dir: str, args) -> None:
    """The run's metrics, settings and log beside its result.json in --out (no models), without
    machine paths."""
    os.makedirs(out_dir, exist_ok=True)
    names = ("metrics.jsonl",) if arm.front_end == "job" else ("trainer_state.json", "train_results.json")
    for name in names + ("command.json", "log.txt"):
        if os.path.exists(os.path.join(run_dir, name)):
            with open(os.path.join(run_dir, name), encoding="utf-8", errors="replace") as f:
                text = f.read()
            with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
                f.write(portable(text, args))


def launch(arm, seed: int, shape, args, eval_set: str, cores: Tuple[int, ...]) -> None:
    from sift_ds.ports import free_port
    from sift_ds.study import run_mlm_arms

    run_dir = os.path.abspath(os.path.join(args.work, "runs", arm.label, f"seed{seed}"))
    out_dir = os.path.join(args.out, "runs", arm.label, f"seed{seed}")
    if os.path.exists(os.path.join(out_dir, "result.json")):
        return
    if os.path.isdir(run_dir):
        shutil.rmtree(run_dir)  # an unfinished run starts over: its timing is whole
    os.makedirs(run_dir)
    if arm.front_end == "job":
        deepspeed = os.path.join(os.path.dirname(sys.executable), "deepspeed")
        cmd = run_mlm_arms.job_command(deepspeed, free_port(), arm, shape, seed, run_dir)
    else:
        cmd = run_mlm_arms.run_mlm_command(sys.executable, arm, shape, seed, run_dir)
    with open(os.path.join(run_dir, "command.json"), "w", encoding="utf-8") as f:
        json.dump({"argv": cmd, "cores": list(cores)}, f, indent=1)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1" if cores else os.environ.get("OMP_NUM_THREADS", ""))
    env.setdefault("DS_ACCELERATOR", "cpu")
    pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    say(f"{arm.label}/seed{seed}: starting{' on core ' + ','.join(map(str, cores)) if cores else ''}")
    start = time.time()
    with open(os.path.join(run_dir, "log.txt"), "w", encoding="utf-8") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=pin).returncode
    if code != 0:
        raise RuntimeError(f"run {arm.label}/seed{seed} failed (exit {code}); log: {run_dir}/log.txt")
    seconds, share = run_mlm_arms.train_seconds(arm, run_dir)
    scores_file = os.path.join(run_dir, "fixed_eval.json")
    subprocess.run([sys.executable, os.path.abspath(__file__), "--evaluate",
                    run_mlm_arms.final_model(arm, run_dir), eval_set, scores_file],
                   check=True, env=env, preexec_fn=pin, stdout=subprocess.DEVNULL)
    with open(scores_file, encoding="utf-8") as f:
        scores = json.load(f)
    keep_small_files(arm, run_dir, out_dir, args)
    result = {"arm": arm.label, "seed": seed, "front_end": arm.front_end, "steps": arm.steps,
              "sparse_head": arm.sparse_head, "sift": arm.sift, "samples": arm.steps * shape.batch_size,
              "train_seconds": seconds, "selection_share": share, **scores,
              "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "wall_s": round(time.time() - start, 1)}
    with open(os.path.join(out_dir, "result.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    say(f"{arm.label}/seed{seed}: {seconds:.0f} s of training, val_loss {scores['val_loss']:.4f}, "
        f"val_acc {scores['val_acc']:.4f}")


def run_all(plan, shape, args, eval_set: str) -> None:
    pause = os.path.join(args.work, "PAUSE")
    slots: "queue.Queue[Tuple[int, ...]]" = queue.Queue()
    for core in args.pin_cores or [None]:
        slots.put((core,) if core is not None else ())
    failures: List[BaseException] = []
    lock = threading.Lock()

    def one(item):
        arm, seed = item
        if failures:
            return
        cores = slots.get()
        while os.path.exists(pause) and not failures:  # held: the running runs finish, no new one starts
            time.sleep(5)
        try:
            launch(arm, seed, shape, args, eval_set, cores)
        except Exception as err:  # noqa: BLE001 - reported after the other runs finish
            with lock:
                failures.append(err)
        finally:
            slots.put(cores)

    with ThreadPoolExecutor(max_workers=max(1, len(args.pin_cores))) as pool:
        list(pool.map(one, plan))
    if failures:
        fail(failures[0], status=1)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.evaluate:
        evaluate_main(*args.evaluate)
        return 0
    from sift_ds.study import run_mlm_arms, run_mlm_report

    try:
        arms = run_mlm_arms.study_arms(args.budgets, args.steps)
    except ValueError as err:
        fail(err)
    if not args.analyze_only:
        if not args.ds_config or not os.path.isfile(args.ds_config):
            fail(f"--ds_config {args.ds_config}: no such file")
        if not args.data or not os.path.isfile(args.data):
            fail(f"--data {args.data}: no such file")
        try:
            section, shape_settings = run_mlm_report.study_settings(args.ds_config, args.sift)
        except ValueError as err:
            fail(err)
        if args.vocab_size is not None:
            if args.vocab_size < 128:
                fail(f"--vocab_size {args.vocab_size}: too small for a WordPiece vocabulary (at least 128)")
            section = dict(section, vocab_size=args.vocab_size)
        train_file, prepared, tokenizer, eval_set = prepare(args, section)
        shape = run_mlm_arms.StudyShape(model_config=os.path.abspath(section["model"]),
                                        ds_config=os.path.abspath(args.ds_config), tokenizer=os.path.abspath(tokenizer),
                                        train_file=os.path.abspath(train_file), prepared=os.path.abspath(prepared),
                                        **shape_settings)
        os.makedirs(args.out, exist_ok=True)
        command = "python launch/run_mlm_study.py " + " ".join(sys.argv[1:] if argv is None else argv)
        with open(os.path.join(args.out, run_mlm_report.STUDY_FILE), "w", encoding="utf-8") as f:
            json.dump({"command": portable(command, args),
                       "budgets": args.budgets, "steps": args.steps, "seeds": args.seeds,
                       "shape": {k: v for k, v in shape_settings.items()}, "model": section["model"],
                       "vocab_size": section["vocab_size"]}, f, indent=1)
        chosen = set(args.only.split(",")) if args.only else {a.label for a in arms}
        unknown = chosen - {a.label for a in arms}
        if unknown:
            fail(f"--only {args.only}: no arm named {sorted(unknown)[0]} (arms: {', '.join(a.label for a in arms)})")
        plan = run_mlm_arms.study_plan([arm for arm in arms if arm.label in chosen], args.seeds)
        run_all(plan, shape, args, eval_set)
    if args.only:
        return 0  # a part of the study: no report
    try:
        paths = run_mlm_report.write(args.out, arms, n_boot=args.bootstrap)
    except ValueError as err:
        fail(err)
    say("wrote " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
