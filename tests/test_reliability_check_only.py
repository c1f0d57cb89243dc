"""``--check_only`` refuses whatever the run refuses: one validation path for both. The candidate
values are generated from the options themselves (every int and float option gets the edges of its
type: negative, zero, one, NaN, infinity); each is given to ``--check_only``, and every value it
accepts is given to the real run, which must accept it too (a run that refuses what the check
passed is the gap this guards: a study stopped by ``compare.py`` only after its first run)."""
import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest

from launch_helpers import load_cli, small_config
from launcher import REPO, clean_env
from sift_ds.pretrain.options import PretrainOptions, _base_type

cli = load_cli()
TOKENIZER = os.path.join(REPO, "ds_configs", "tokenizers", "pydoc_wordpiece_4096")
EDGES = {"int": ["-1", "0"], "float": ["-0.1", "0.0", "1.0", "nan", "inf"]}


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)


def edge_cases():
    """(option, value) for every int / float option of the command line and every edge of its type."""
    for f in dataclasses.fields(PretrainOptions):
        kind = f.metadata.get("kind") or _base_type(f.type)
        if f.metadata.get("cli") is not False and kind in EDGES and not f.metadata.get("choices"):
            for value in EDGES[kind]:
                yield f.name, value


def check_only(argv, capsys) -> int:
    try:
        cli.BERT.main(argv + ["--check_only"])
    except SystemExit as exc:
        capsys.readouterr()
        return exc.code
    capsys.readouterr()
    return 0


def test_check_only_refuses_every_value_the_run_refuses(tmp_path, capsys):
    config = small_config(tmp_path, max_steps=2)
    base = ["--ds_config", config, "--tokenizer", TOKENIZER]
    cases = list(edge_cases())
    assert ("holdout_fraction", "nan") in cases and ("seed", "-1") in cases  # generated from the options
    accepted = []
    for i, (name, value) in enumerate(cases):
        argv = base + ["--output_dir", str(tmp_path / f"run{i}"), f"--{name}", value]
        code = check_only(argv, capsys)
        assert code in (0, 2), (name, value, code)
        if code == 0:
            accepted.append(argv)
    for value in ("-0.1", "1.0", "nan"):  # the reported gap
        assert check_only(base + ["--output_dir", str(tmp_path / "h"), "--holdout_fraction", value], capsys) == 2
    plan = tmp_path / "accepted.json"
    plan.write_text(json.dumps(accepted))
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "dist_scripts", "option_runs.py"), str(plan)],
                          cwd=REPO, env=clean_env(DS_ACCELERATOR="cpu"), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(runs) == len(accepted), proc.stdout[-2000:] + proc.stderr[-4000:]
    refused = [(r["argv"][-2:], r["last"]) for r in runs if r["code"] != 0]
    assert not refused, f"the run refuses what --check_only accepts: {refused}"


def test_a_warm_up_of_no_steps_is_refused_before_deepspeed_refuses_it(tmp_path, capsys):
    """DeepSpeed's warm-up schedulers raise on warmup_num_steps 0 only when the engine is built."""
    config = small_config(tmp_path, max_steps=2)
    argv = ["--ds_config", config, "--output_dir", str(tmp_path / "o"), "--check_only"]
    assert check_only(argv[:-1] + ["--lr_warmup_steps", "0"], capsys) == 2
    cfg = json.loads(open(config).read())
    cfg["scheduler"]["params"]["warmup_num_steps"] = 0
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit):
        cli.BERT.main(argv)
    assert "ds_config scheduler.params.warmup_num_steps must be an integer > 0" in capsys.readouterr().err
