"""Stop requests that never orphan a rank: SIGINT or SIGTERM to any process of the job stops every
rank at the next step boundary with a checkpoint.

* A real 2-rank run started under ``setsid``, whose ``deepspeed`` command alone gets SIGINT (what a
  scheduler's ``kill -INT <pid>`` does): both ranks exit 0 soon after, with a complete checkpoint
  at the last logged step, and ``--resume auto`` from it reproduces the uninterrupted run bitwise.
* The watch itself: the end of a process laid out like the ``deepspeed`` command (a Python script of
  that name), killed by SIGTERM, is a stop request; a live one is not.
* SIGINT to a rank asks for a stop; a second SIGINT aborts at once, as a terminal user expects.
"""
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file

from launch_helpers import SCRIPT, metrics, pretrain_2_ranks, records_written, small_config
from launcher import DEEPSPEED, REPO, clean_env, free_port
from process_guard import is_live
from sift_ds.pretrain import manifest
from sift_ds.pretrain.corpus import default_corpus
from sift_ds.pretrain.stop_request import StopRequest, launcher_processes
from sift_ds.pretrain.tokenizer import batched_texts, train_wordpiece

STEPS = 60  # steps of ~0.1 s: the stop lands at the step after the signal, far from the end


def rank_processes(output_dir) -> list:
    return [p for p in psutil.process_iter(["cmdline"]) if str(output_dir) in (p.info["cmdline"] or [])
            and any(a.startswith("--local_rank") for a in p.info["cmdline"])]


def test_sigint_to_the_deepspeed_command_alone_stops_every_rank_with_a_checkpoint(tmp_path):
    # three times the others' steps: the ranks learn that the deepspeed command ended by polling, and
    # on a fast machine 60 steps can end before the stop lands
    steps = 3 * STEPS
    config = small_config(tmp_path, base="tiny_cpu_vanilla.json", max_steps=steps)
    train_wordpiece(batched_texts(default_corpus()), 1000).save_pretrained(tmp_path / "tokenizer")
    common = ["--ds_config", config, "--tokenizer", tmp_path / "tokenizer"]
    reference, split = tmp_path / "reference", tmp_path / "split"
    pretrain_2_ranks(common + ["--output_dir", reference])

    log_path = tmp_path / "stopped.log"
    with open(log_path, "w") as log:
        runner = subprocess.Popen([DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), SCRIPT,
                                   *map(str, common), "--output_dir", str(split)], cwd=REPO,
                                  env=clean_env(DS_ACCELERATOR="cpu"), stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.time() + 240
        while records_written(split) < 2:
            assert runner.poll() is None and time.time() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.1)
        ranks = rank_processes(split)
        assert len(ranks) == 2
        job = ranks + [ranks[0].parent()]  # and the per-node launcher
        runner.send_signal(signal.SIGINT)  # the runner only: the launcher and the ranks get nothing
        runner.wait(timeout=30)
        deadline = time.time() + 120
        while any(is_live(p) for p in job) and time.time() < deadline:
            time.sleep(0.2)
        output = log_path.read_text()
        assert not any(is_live(p) for p in job), f"still running after the runner's SIGINT\n{output[-3000:]}"
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
    for rank in ranks:
        assert f"Process {rank.pid} exits successfully" in output, output[-3000:]
    last = metrics(split)[-1]["step"]
    assert 2 <= last < steps, output[-3000:]
    assert f"stopped at step {last}: the deepspeed command (pid {runner.pid}) ended" in output, output[-3000:]
    assert (split / "checkpoints" / "latest").read_text().strip() == f"global_step{last}"
    assert manifest.incomplete_reason(str(split / "checkpoints" / f"global_step{last}")) is None
    assert not (split / "final").exists()

    resumed = pretrain_2_ranks(common + ["--output_dir", split, "--resume", "auto"])
    assert f"resumed from {split}/checkpoints/global_step{last}" in resumed.stdout + resumed.stderr
    want, got = metrics(reference), metrics(split)
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, steps + 1))
    assert [(r["train_loss"], r["lr"]) for r in got] == [(r["train_loss"], r["lr"]) for r in want]
    assert got[-1]["val_loss"] == want[-1]["val_loss"]
    final_want, final_got = (load_file(run / "final" / "model.safetensors") for run in (reference, split))
    assert final_want.keys() == final_got.keys()
    for name in final_want:
        assert torch.equal(final_want[name], final_got[name]), name


FAKE_RUNNER = "import subprocess, sys\nsubprocess.Popen(['sleep', '60']).wait()\n"


def test_the_end_of_the_deepspeed_command_above_a_rank_is_a_stop_request(tmp_path):
    script = tmp_path / "deepspeed"  # laid out like DeepSpeed's console script: python .../bin/deepspeed
    script.write_text(FAKE_RUNNER)
    runner = subprocess.Popen([sys.executable, str(script)], env=clean_env())
    rank = None
    try:
        deadline = time.time() + 30
        while not psutil.Process(runner.pid).children() and time.time() < deadline:
            time.sleep(0.05)
        rank = psutil.Process(runner.pid).children()[0]  # stands in for a rank
        launchers = launcher_processes(rank.pid)
        assert [(p.pid, role) for p, role in launchers] == [(runner.pid, "the deepspeed command")]
        assert launcher_processes() == []  # pytest runs under no launcher

        request = StopRequest()
        request.watch(launchers)
        assert request.poll() is None  # a live launcher is no stop request
        runner.send_signal(signal.SIGTERM)  # not reaped: a zombie is ended too
        deadline = time.time() + 10
        while request.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert request.poll() == f"the deepspeed command (pid {runner.pid}) ended"
    finally:
        for proc in (runner, rank):
            if proc is not None:
                proc.kill()
        runner.wait()


def test_sigint_asks_for_a_stop_and_a_second_sigint_aborts():
    seen = []
    previous = {signum: signal.signal(signum, lambda signum, frame: seen.append(signum))  # never pytest's
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        request = StopRequest()
        request.install()
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        assert request.poll() == "SIGTERM" and not seen  # the first reason is kept
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        request.restore()
        os.kill(os.getpid(), signal.SIGINT)
        assert seen == [signal.SIGINT]  # the handlers from before install are back
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
