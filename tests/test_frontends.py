"""The same checks through the three front-ends (the DeepSpeed engine, the HF Trainer, the Megatron
drop-in), each on a 3-layer model of its own kind, run by tests/dist_scripts/frontend_checks.py under
torchrun (one rank, gloo): the same one-line error for an exit layer beyond the model's depth, the
fidelity probe reported (at the full depth equal to scipy on the front-end's own model forward), and the
same number of kept rows for the same config."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats

from launcher import REPO, clean_env, free_port

SCRIPT = os.path.join(REPO, "tests", "dist_scripts", "frontend_checks.py")
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
FRONTENDS = ["deepspeed", "hf", pytest.param("megatron", marks=pytest.mark.skipif(
    importlib.util.find_spec("megatron") is None, reason="needs the megatron-core test extra"))]


@pytest.fixture(scope="module", params=FRONTENDS)
def report(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    cmd = [TORCHRUN, "--nproc_per_node", "1", "--master_port", str(free_port()), SCRIPT, "--frontend", request.param,
           "--out", str(out)]
    tests = os.path.join(REPO, "tests")
    env = clean_env(PYTHONPATH=os.pathsep.join([tests, os.path.join(tests, "dist_scripts")]))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    with open(out / f"{request.param}.json", encoding="utf-8") as f:
        return json.load(f)


def test_an_exit_layer_beyond_the_depth_is_the_same_one_line_error(report):
    assert report["exit_layer_error"] == "sift.exit_layer=5 exceeds the model's depth (3 encoder layers)"


def test_the_probe_reports(report):
    # At the full depth the early exit is the whole model: the entropy criterion's probe is scipy's
    # Spearman and the top-half overlap of the entropy and loss of the model's own logits.
    entropy, loss = (np.array(report["full_depth_rows"][c]) for c in ("entropy", "loss"))
    valid = np.isfinite(entropy) & np.isfinite(loss)
    k = round(valid.sum() / 2)
    top = lambda v: set(np.argsort(-v[valid], kind="stable")[:k])  # noqa: E731
    want = scipy.stats.spearmanr(entropy[valid], loss[valid])[0]
    assert report["probe_full_depth"]["probe/spearman"] == pytest.approx(want, abs=1e-5) and abs(want) < 0.99
    assert report["probe_full_depth"]["probe/top_half_overlap"] == pytest.approx(len(top(entropy) & top(loss)) / k)
    probe = report["probe"]
    assert set(probe) == {"probe/spearman", "probe/top_half_overlap"}
    assert -1.0 <= probe["probe/spearman"] <= 1.0
    # The top halves hold 4 rows each (of 8 rows, or of the 7 with a labelled token: round(3.5) = 4).
    assert probe["probe/top_half_overlap"] in (0.0, 0.25, 0.5, 0.75, 1.0)


def test_keep_is_the_same_for_the_same_config(report):
    # keep_ratio 0.25: the full gross batch of 8 rows keeps the micro-batch of 2; a short one of 5 keeps
    # round(5 * 0.25) = 1.
    assert report["kept"] == [2, 1]
