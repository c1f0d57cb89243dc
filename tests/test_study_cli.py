"""launch/compare.py end to end with the real pretraining job on the tiny preset: one budget-matched
study (vanilla at two budgets and a SIFT arm, 2 seeds, pinned cores) shared by the tests that read its
report (results.md, results.csv, 4 plots) and then re-invoke it (finished runs skipped, an unfinished
one resumed, --analyze_only, refused settings changes); a failing run and one-line input errors."""
import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
import time

import pytest

from launcher import DIST_VARS, REPO, clean_env

COMPARE = os.path.join(REPO, "launch", "compare.py")
CONFIG = os.path.join(REPO, "ds_configs", "tiny_cpu_sift.json")
PLOTS = ["val_loss_vs_samples.png", "val_acc_vs_samples.png", "val_loss_vs_time.png", "val_acc_vs_time.png"]


def compare(args, timeout=600):
    return subprocess.run([sys.executable, COMPARE, *map(str, args)], cwd=REPO, env=clean_env(DS_ACCELERATOR="cpu"),
                          capture_output=True, text=True, timeout=timeout)


def compare_here(capsys, monkeypatch, args) -> subprocess.CompletedProcess:
    """compare.py's main in this process, with the environment ``compare`` gives it (its runs still start
    as processes): its exit status and output, as ``compare`` returns them. A re-invocation of the
    shared study reads it this way, without a second interpreter's start-up and imports."""
    for key, value in clean_env(DS_ACCELERATOR="cpu").items():
        monkeypatch.setenv(key, value)
    for key in DIST_VARS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(REPO)
    capsys.readouterr()
    try:
        code = load_compare().main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def job(tmp_path, steps=30, eval_interval=10):
    """Passthrough of a tiny run: 30 steps, evaluations every 10, SIFT selecting from step 6."""
    return ["--model", "tiny", "--max_steps", steps, "--eval_interval", eval_interval, "--log_interval", 5,
            "--save_interval", 0,
            "--vocab_size", 1024, "--seq_len", 64, "--sift_warmup_steps", 5, "--cache_dir", tmp_path / "cache",
            "--sift_start_after_lr_peak", "true"]  # step 6 is after the budget study's 4-step LR warm-up


def shown(proc):
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"


ARMS = "vanilla@max_steps=20,vanilla,loss:1"  # vanilla at two budgets (the frontier) and one SIFT arm
LABELS = ["vanilla_max_steps-20", "vanilla", "loss-exit1"]


def study_args(tmp_path, ds_config, **job_args):
    return ["--ds_config", ds_config, "--arms", ARMS, "--seeds", 2, "--parallel", 2, "--pin_cores", "0,1",
            "--bootstrap", 100, "--out", tmp_path / "cmp", "--", *job(tmp_path, **job_args)]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One budget-matched study that the tests below read and then re-invoke: 3 arms x 2 seeds, two
    runs at a time, pinned to cores 0 and 1. Each schedule warms up for 4 steps and decays to 0 at its
    own end."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    tmp_path = tmp_path_factory.mktemp("study")
    config = json.loads(open(CONFIG).read())
    config["scheduler"]["params"]["warmup_num_steps"] = 4
    (tmp_path / "ds.json").write_text(json.dumps(config))
    args = study_args(tmp_path, tmp_path / "ds.json")
    proc = compare(args)
    assert proc.returncode == 0, shown(proc)
    return tmp_path, args, proc


def csv_report(out):
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_the_report_has_every_arm_and_seed(study):
    tmp_path, args, proc = study
    out = tmp_path / "cmp"
    assert "0 of 6 runs already finished" in proc.stdout
    md = (out / "results.md").read_text()
    assert f"--arms {ARMS}" in md and "| loss-exit1 | 0,1 |" in md and "**Legend.**" in md
    for name in PLOTS:
        assert (out / "plots" / name).stat().st_size > 5000
    rows = csv_report(out)
    assert [r["arm"] for r in rows] == LABELS
    for row in rows:  # every column but the budget-matched ones (empty for vanilla arms) is a number
        values = {k: float(v) for k, v in row.items() if k != "arm" and not k.startswith("budget_matched")}
        assert values["seeds"] == 2 and 0 < values["final_val_acc_mean"] < 1
        assert not math.isnan(values["final_val_loss_std"])
    vanilla, sift = ({k: float(v) for k, v in r.items() if k != "arm" and not k.startswith("budget_matched")}
                     for r in rows[1:])
    assert vanilla["speedup_loss_samples"] == 1.0 and vanilla["loss_target_samples"] <= 30 * 16
    assert vanilla["selection_share_mean"] == 0.0 < sift["selection_share_mean"] < 1
    assert sift["speedup_acc_samples_ci_lo"] <= sift["speedup_acc_samples_ci_hi"]

    # One tokenizer for all: the first run trains it, the others load it.
    first = out / "runs" / LABELS[0] / "seed0"
    for arm, seed in [(arm, seed) for arm in LABELS for seed in (0, 1)][1:]:
        run = out / "runs" / arm / f"seed{seed}"
        words = json.loads((run / "command.json").read_text())["args"]
        assert words[words.index("--tokenizer") + 1] == str(first / "tokenizer")
        assert words[words.index("--seed") + 1] == str(seed) and (run / "DONE").exists()
    assert "--tokenizer" not in json.loads((first / "command.json").read_text())["args"]


def test_budget_matched_mode_with_pinned_cores(study):
    """Vanilla at two budgets (its own --max_steps each, schedule decayed at its own end) is the
    frontier; the SIFT arm gets budget-matched speed-ups in samples and wall-clock; runs are pinned."""
    tmp_path, args, proc = study
    out = tmp_path / "cmp"
    assert "vanilla_max_steps-20/seed0: starting, cores 0" in proc.stdout and ", cores 1 (" in proc.stdout
    short = out / "runs" / "vanilla_max_steps-20" / "seed0"
    words = json.loads((short / "command.json").read_text())["args"]
    assert words[words.index("--max_steps") + 1] == "20" and words.count("--max_steps") == 1
    records = [json.loads(line) for line in (short / "metrics.jsonl").read_text().splitlines()]
    last = max(records, key=lambda r: r["step"])
    # Its schedule is its own: linear decay from step 4 that reaches 0 right after its step 20 (lr of the
    # last step = 1/16 of the peak), where the 30-step run is still at 11/26 of it.
    assert last["step"] == 20 and last["max_steps"] == 20 and last["lr"] == pytest.approx(3e-3 / 16)
    assert last["val_loss"] is not None  # evaluated at its own end
    full = [json.loads(line) for line in (out / "runs" / "vanilla" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    assert next(r["lr"] for r in full if r["step"] == 20) == pytest.approx(3e-3 * 11 / 26)

    md = (out / "results.md").read_text()
    assert "## Budget-matched speed-up (the vanilla frontier)" in md and "| vanilla_max_steps-20 | 320 |" in md
    rows = {r["arm"]: r for r in csv_report(out)}
    sift = rows["loss-exit1"]
    for metric in ("loss", "acc"):
        for axis in ("samples", "time"):
            key = f"budget_matched_{metric}_{axis}"
            assert float(sift[key]) > 0 and sift[f"{key}_bound"] in ("", ">", "<")
            assert float(sift[f"{key}_ci_lo"]) <= float(sift[f"{key}_ci_hi"])
    assert rows["vanilla"]["budget_matched_loss_samples"] == ""  # the frontier is not compared with itself
    assert "loss-exit1: budget-matched at equal final val_loss: samples x" in proc.stdout
    # What SIFT adds outside the step is counted: selection plus the data of the dropped rows.
    for seed in (0, 1):
        metrics = out / "runs" / "loss-exit1" / f"seed{seed}" / "metrics.jsonl"
        records = [json.loads(line) for line in metrics.read_text().splitlines()]
        selecting = [r for r in records if r.get("sift/warmup") == 0.0 and r.get("sift/overhead_share") is not None]
        assert selecting and all(0 < r["sift/overhead_share"] < 1 and 0 <= r["data/wait_share"] < 1 for r in selecting)
    assert 0 < float(sift["overhead_share_mean"]) < 1


def test_a_second_invocation_skips_resumes_and_refuses(study, capsys, monkeypatch):
    """Again: every run is skipped and the report rewritten; an unfinished run is resumed;
    --analyze_only reads the runs without starting any; other settings in the same --out are refused."""
    tmp_path, args, _ = study
    out = tmp_path / "cmp"
    logs = {p: p.stat().st_mtime for p in (out / "runs").glob("*/*/log.txt")}
    start = time.time()
    again = compare_here(capsys, monkeypatch, args)
    assert again.returncode == 0, shown(again)
    assert "6 of 6 runs already finished" in again.stdout and "starting" not in again.stdout
    assert time.time() - start < 60 and logs == {p: p.stat().st_mtime for p in logs}

    (out / "runs" / "loss-exit1" / "seed1" / "DONE").unlink()
    only = compare_here(capsys, monkeypatch, ["--analyze_only", "--out", out])
    assert only.returncode == 0, shown(only)
    assert "left out of the report: loss-exit1/seed1" in only.stdout
    assert "| loss-exit1 | 0 |" in (out / "results.md").read_text()
    resumed = compare_here(capsys, monkeypatch, args)
    assert resumed.returncode == 0, shown(resumed)
    assert "loss-exit1/seed1: resuming" in resumed.stdout and "5 of 6 runs already finished" in resumed.stdout

    # Other settings in the same --out are refused, finished runs included.
    changed = compare_here(capsys, monkeypatch, study_args(tmp_path, tmp_path / "ds.json", eval_interval=5))
    assert changed.returncode == 2 and changed.stderr.count("\n") == 1, shown(changed)
    assert "compare.py: error: run vanilla_max_steps-20/seed0 was started with other settings" in changed.stderr


def test_failing_run_names_its_log(tmp_path, capsys, monkeypatch):
    """A run that passes the up-front checks and fails while it runs (here: a corpus that is not
    JSON Lines) stops the study with one line naming the run, the job's own error and its log."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    out = tmp_path / "bad"
    proc = compare_here(capsys, monkeypatch, ["--ds_config", CONFIG, "--arms", "vanilla,loss:1", "--seeds", 1, "--out",
                                              out, "--data", bad, "--", *job(tmp_path)])
    assert proc.returncode == 1, shown(proc)
    log = out / "runs" / "vanilla" / "seed0" / "log.txt"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("compare.py: error: run vanilla/seed0 failed (exit "), lines
    assert lines[0].endswith(f"; log: {log}") and "bad.jsonl" in lines[0]  # with the job's own error line
    assert log.exists() and not (out / "runs" / "loss-exit1").exists()


def load_compare():
    spec = importlib.util.spec_from_file_location("compare_cli", COMPARE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def refusal(capsys, monkeypatch, args) -> list:
    """compare.py's main in process (its jobs still run as processes): exit status 2, and stderr's lines."""
    proc = compare_here(capsys, monkeypatch, args)
    assert proc.returncode == 2, proc.stderr
    return proc.stderr.strip().splitlines()


def test_every_arm_is_checked_by_the_job_before_the_first_run(tmp_path, capsys, monkeypatch):
    """An arm the job would refuse (an exit layer below the tiny model's depth of 2) stops the study
    before any run starts, with the job's own one-line reason."""
    out = tmp_path / "plan"
    lines = refusal(capsys, monkeypatch, ["--ds_config", CONFIG, "--arms", "vanilla,loss:9", "--seeds", 1, "--out", out,
                                          "--", *job(tmp_path)])
    assert len(lines) == 1 and lines[0].startswith("compare.py: error: arm 'loss-exit9': "), lines
    assert "exit_layer=9 exceeds the model's depth" in lines[0]
    assert not (out / "runs").exists()


def test_a_causal_study_runs_the_causal_lm_job(tmp_path, capsys, monkeypatch):
    """A ds_config whose "pretrain" section sets objective "clm" makes every run launch/pretrain_gpt.py:
    its own check refuses an exit below the tiny Llama's depth of 2, before any run starts."""
    out = tmp_path / "clm"
    config = os.path.join(REPO, "ds_configs", "tiny_llama_cpu_sift_experiment.json")
    lines = refusal(capsys, monkeypatch, ["--ds_config", config, "--arms", "entropy:3,vanilla", "--seeds", 1,
                                          "--out", out, "--", "--max_steps", 4, "--cache_dir", tmp_path / "cache"])
    assert len(lines) == 1 and lines[0].startswith("compare.py: error: arm 'entropy-exit3': pretrain_gpt.py: "), lines
    assert "exit_layer=3 exceeds the model's depth" in lines[0] and not (out / "runs").exists()


@pytest.mark.parametrize("text, seeds", [("3", [0, 1, 2]), ("1,5,9", [1, 5, 9]), ("4,", [4]), ("0,", [0])])
def test_seed_list_takes_a_count_a_list_or_one_seed(text, seeds):
    assert load_compare().seed_list(text) == seeds


@pytest.mark.parametrize("extra, message", [
    (["--arms", "vanilla", "--seeds", ","], "argument --seeds: expected a count"),
    (["--arms", "vanilla", "--seeds", "1,,2"], "argument --seeds: expected a count"),
    (["--arms", "vanilla,loss"], "arm 'loss': expected 'vanilla' or CRITERION:EXIT_LAYER"),
    (["--arms", "loss:1"], "no arm named 'vanilla'"),
    (["--arms", "vanilla,loss:1", "--", "--seed", "3"], "the words after '--' set --seed"),
    (["--arms", "vanilla", "--seeds", "x"], "argument --seeds: expected a count"),
    (["--arms", "vanilla", "--parallel", "0"], "argument --parallel: expected a positive integer"),
    (["--arms", "vanilla", "--bogus"], "unrecognized arguments: --bogus"),
    (["--arms", "vanilla,loss:1@bogus=1"], "arm 'loss-exit1_bogus-1': the pretraining job has no option --sift_bogus"),
    (["--arms", "vanilla,lost:1"], "arm 'lost-exit1': pretrain_bert.py: error: sift.criterion must be one of ['entropy', 'loss',"),
    (["--arms", "vanilla", "--ds_config", "missing.json"], "--ds_config missing.json: no such file"),
    (["--arms", "vanilla", "--out", "/proc/x"], "--out /proc/x: cannot create it"),
    (["--arms", "vanilla", "--pin_cores", "0,0"], "--pin_cores: a core is listed twice"),
    (["--arms", "vanilla", "--pin_cores", "0", "--parallel", "2"], "--pin_cores gives 1 core(s); --parallel 2"),
    (["--arms", "vanilla", "--pin_cores", "4096"], "--pin_cores: core(s) [4096] are not available"),
    (["--arms", "vanilla", "--pin_cores", "a"], "argument --pin_cores: expected a comma-separated list"),
    (["--arms", "vanilla@sampling=rank"], "arm 'vanilla@sampling=rank': a vanilla arm takes only @max_steps=N"),
    (["--arms", "vanilla,loss:1@max_steps=0"], "arm 'loss:1@max_steps=0': @max_steps must be a positive integer"),
])
def test_bad_input_is_one_line(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    with pytest.raises(SystemExit) as exit_:
        load_compare().main(["--ds_config", CONFIG, "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(f"compare.py: error: {message}") and err.count("\n") == 1, err


def test_pinned_launch_sets_the_affinity_of_the_launcher_and_its_children(tmp_path):
    """runs.launch with a stand-in launcher that records the cores it (and a child) may run on."""
    from sift_ds.study import runs
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    fake = tmp_path / "fake_deepspeed.py"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import json, os, subprocess, sys\n"
        "out = sys.argv[sys.argv.index('--output_dir') + 1]\n"
        "child = subprocess.run([sys.executable, '-c', 'import os; print(sorted(os.sched_getaffinity(0)))'],"
        " capture_output=True, text=True).stdout.strip()\n"
        "open(os.path.join(out, 'affinity.txt'), 'w').write(f'{sorted(os.sched_getaffinity(0))} {child}')\n"
        "open(os.path.join(out, 'metrics.jsonl'), 'w').write(json.dumps({'step': 3, 'max_steps': 3}) + '\\n')\n")
    fake.chmod(0o755)
    (tmp_path / "ds.json").write_text("{}")
    settings = runs.Settings(str(tmp_path / "job.py"), str(tmp_path / "ds.json"), ["--max_steps", "3"], [], 1, 1,
                             deepspeed=str(fake), pin_cores=(1,))
    run = runs.Run("vanilla", 0, ("--sift_enabled", "false"), str(tmp_path / "r"))
    runs.launch(run, [run], settings, say=lambda _: None, cores=(1,))
    assert (tmp_path / "r" / "affinity.txt").read_text() == "[1] [1]" and (tmp_path / "r" / "DONE").exists()


def test_a_portable_study_names_no_machine_path_and_is_still_resumed(study, capsys, monkeypatch):
    """--analyze_only --portable rewrites the finished runs' files and study.json without the
    study directory's path (<out>, or a checkout-relative path); a re-invocation then still finds
    every run finished."""
    tmp_path, args, _ = study
    out = tmp_path / "cmp"
    proc = compare_here(capsys, monkeypatch, ["--analyze_only", "--portable", "--out", out])
    assert proc.returncode == 0, shown(proc)
    files = [out / "study.json", out / "results.md", *(out / "runs").glob("*/*/command.json"),
             *(out / "runs").glob("*/*/run_config.json"), *(out / "runs").glob("*/*/log.txt")]
    assert len(files) == 2 + 3 * 6
    assert not [f for f in files if str(out) in f.read_text(errors="replace")]
    words = json.loads((out / "runs" / "vanilla" / "seed1" / "command.json").read_text())["args"]
    assert words[words.index("--tokenizer") + 1] == f"<out>/runs/{LABELS[0]}/seed0/tokenizer"
    again = compare_here(capsys, monkeypatch, args)
    assert again.returncode == 0, shown(again)
    assert "6 of 6 runs already finished" in again.stdout and "starting" not in again.stdout
