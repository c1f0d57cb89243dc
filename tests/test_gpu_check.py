"""benchmarks/gpu_check.py, the one-command GPU check, kept from rotting: its dry run (every phase on
the CPU at tiny shapes, the Triton kernels interpreted) must pass its own correctness checks, find
the CUDA-only tests under their names, and write what the docs say it writes."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from launcher import REPO, clean_env

SCRIPT = os.path.join(REPO, "benchmarks", "gpu_check.py")
PHASES = os.path.join(REPO, "benchmarks", "gpu_check_phases.py")  # the measurements; they import gpu_check


def load_script(path=SCRIPT):
    """A benchmarks/ script as a module, entered in sys.modules under its name (as an import would)."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run([sys.executable, SCRIPT, "--dry", "--out", str(out)], cwd=REPO, env=clean_env(),
                          capture_output=True, text=True, timeout=800)
    assert proc.returncode == 0, f"--- stdout\n{proc.stdout[-5000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    return proc.stdout, out, json.load(open(out / "gpu_check.json"))


def test_scorer_rows_are_checked_and_timed(dry_run):
    _, _, report = dry_run
    assert report["scorer"]["status"] == "ok"
    rows = {(r["impl"], r["criterion"]): r for r in report["scorer"]["rows"]}
    for key in [("triton", "loss"), ("triton", "entropy"), ("bf16-eager", "loss"), ("bf16-eager", "entropy"),
                ("bf16-compile", "loss"), ("bf16-compile", "entropy")]:
        assert rows[key]["check"] == "ok" and rows[key]["ms"] > 0 and rows[key]["tflops"] > 0, key
    assert rows[("triton", "loss")]["max_abs_err"] < 1e-4  # fp32 under the interpreter
    assert rows[("liger", "loss")]["status"] == "skipped: needs CUDA"
    assert report["scorer"]["peak_tflops"] > 0
    # the phases import sift_ds as installed from the checkout (with its Triton kernels), not the checkout
    assert report["env"]["sift_ds"] == os.path.join(load_script().PACKAGE, "sift_ds"), report["env"]


def test_cuda_only_tests_still_exist(dry_run):
    _, _, report = dry_run
    assert report["tests"]["status"] == "ok"
    assert report["tests"]["collected"] >= 100, report["tests"]["summary"]


def test_step_arms_and_report(dry_run):
    stdout, out, report = dry_run
    arms = report["step"]["arms"]
    assert set(arms) == {"vanilla", "sift-fused", "sift-torch", "vanilla-compiled", "sift-compiled"}
    for name in ("sift-fused", "sift-torch", "sift-compiled"):
        assert 0 < arms[name]["selection_share"] < 1 and arms[name]["gross"] == 2 * arms[name]["trained_rows"]
    for name in ("vanilla", "vanilla-compiled"):
        assert arms[name]["gross"] == arms[name]["trained_rows"]
    for name in ("vanilla-compiled", "sift-compiled"):  # torch.compile: static shapes after the warm-up
        assert arms[name]["after_warm_up"] == {"graphs": 0, "graph_breaks": 0}, arms[name]
    assert all(a["trained_tokens_per_s"] > 0 for a in arms.values())
    assert report["step"]["score_check"].endswith("ok")
    assert len(os.listdir(out)) <= 8  # what comes back from a device machine
    assert stdout.rstrip().splitlines()[-1].startswith("  fused vs torch scorer")  # the table is printed last


def test_score_check_catches_a_wrong_output():
    gpu_check = load_script()
    phases = load_script(PHASES)
    want = torch.tensor([1.0, 2.0, float("-inf")])
    assert phases.score_error(want + torch.tensor([0.0, 1e-3, 0.0]), want) == pytest.approx(1e-3, rel=1e-3)
    assert phases.score_error(torch.tensor([1.0, 2.0, 3.0]), want) == float("inf")  # a score for an empty row
    assert gpu_check.parse_counts("3 failed, 111 passed, 2 skipped in 80.1s") == {"failed": 3, "passed": 111, "skipped": 2}
