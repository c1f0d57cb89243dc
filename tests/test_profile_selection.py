"""benchmarks/profile_selection.py runs (tiny shapes, one step each) and its figures add up: the
selection's stages, the shares and the FLOPs model are consistent with each other."""
import json
import os

from launch_helpers import load_cli
from launcher import REPO


def test_profile_selection_runs_and_its_figures_are_consistent(tmp_path, capsys, monkeypatch, single_rank_dist):
    """Its main in this process (a 1-rank engine, as in its own process): no interpreter start-up."""
    out = tmp_path / "profile.json"
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert load_cli(os.path.join(REPO, "benchmarks", "profile_selection.py")).main(
        ["--model", "tiny", "--vocab_size", "4096", "--seq_len", "32", "--micro", "2", "--reps", "2", "--warmup", "1",
         "--json", str(out)]) == 0
    stdout = capsys.readouterr().out
    r = json.loads(out.read_text())
    t = r["seconds"]
    assert r["gross"] == 4 and r["micro"] == 2 and r["model"] == "L2-H64" and r["training_head"] == "sparse"
    assert all(v > 0 for v in t.values())
    assert r["selection_share"] == t["select"] / (t["select"] + t["train"])
    assert 0 < r["model_share"] < 1 and r["measured_over_model"] == r["selection_share"] / r["model_share"]
    parts = sum(t[k] for k in ("positions", "prefix", "head", "vocab", "topk", "take"))
    assert abs(r["unaccounted_select_s"] - (t["select"] - parts)) < 1e-12
    assert "| **select** (engine.select) |" in stdout
