"""benchmarks/bench_criteria.py at a tiny shape: a row per criterion with its measured seconds and its
FLOPs model, as data. The criteria that score with the exit-k pass alone share its FLOPs model (the
stored reference is a column read, the baselines and the weights are per-token arithmetic); the
online reference adds its own model's forward."""
import json
import os

from launcher import REPO
from launch_helpers import load_cli


def test_every_criterion_has_a_row_with_its_flops_model(tmp_path, capsys):
    out = tmp_path / "cost.json"
    model = os.path.join(REPO, "ds_configs", "models", "bert_L4_H128.json")
    load_cli(os.path.join(REPO, "benchmarks", "bench_criteria.py")).main(  # in process: no interpreter start-up
        ["--model", model, "--reference", model, "--vocab", "512", "--seq_len", "32", "--micro", "4", "--reps", "1",
         "--json", str(out)])
    stdout = capsys.readouterr().out
    rows = {r["pass"]: r for r in json.loads(out.read_text())["rows"]}
    exit_only = ["entropy", "loss", "freq_loss, running baseline", "freq_loss, unigram baseline", "importance",
                 "reducible, stored reference"]
    assert set(rows) == set(exit_only) | {"reducible, online reference", "train forward + backward (kept rows)"}
    assert all(r["seconds"] > 0 and r["cost_over_model"] > 0 for r in rows.values())
    assert len({rows[name]["gflops_model"] for name in exit_only}) == 1
    # the same 4-layer model as reference: its full forward is 4 exit-1 passes' layers plus the head once more
    assert rows["reducible, online reference"]["gflops_model"] > 2 * rows["entropy"]["gflops_model"]
    for name in rows:
        assert f"| {name} |" in stdout
