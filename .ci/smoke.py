"""The smoke set of `make test-latest` and `make test-oldest`, run from the repository root in the venv of
the newest releases setup.py allows (plus Hugging Face's kernels), or of the lowest:

0. with --at_floors (test-oldest), that every requirement of setup.py is installed at its floor: one
   above it is named, since another floor then needs more and setup.py's floor cannot be installed;
1. imports from the root, a SIFT selection step against a direct HF forward, `run_mlm_sift.py --help`,
   and `import kernels` giving Hugging Face's package (tests/test_layout.py);
2. a 20-step `deepspeed` run of the tiny SIFT config on 2 CPU ranks, selecting from step 5;
3. one HF Trainer run through launch/run_mlm_sift.py (tests/test_hf_trainer.py);
4. one Megatron TP=2 check on megatron-core over gloo (tests/test_megatron_dist.py);
5. the Triton kernel tests under TRITON_INTERPRET=1, and the keywords the kernels pass to Triton's
   language against the installed Triton (the interpreter ignores some that its compiler needs);
6. the front-ends' refusals of a release below a floor (tests/test_dependency_floors.py).

It prints which installed versions differ from the lock. When a part fails, its last line names the
package and version that broke: the first package that differs from the lock whose files appear in the
failure's traceback, else every package that differs from the lock.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTEST_PARTS = {
    "imports from the root": ["tests/test_layout.py::test_public_api",
                              "tests/test_layout.py::test_editable_install_maps_the_kernels_without_a_top_level_kernels",
                              "tests/test_layout.py::test_from_the_repository_root"],
    "HF Trainer": ["tests/test_hf_trainer.py::test_run_mlm_example_trains_with_sift"],
    "Megatron TP=2": ["tests/test_megatron_dist.py::test_tp2_sequence_parallel_and_pipeline_refused"],
    "kernels (interpreter)": ["tests/test_triton_scorer.py", "tests/test_triton_topk.py",
                              "tests/test_kernel_api_errors.py"],
    "refusals below the floors": ["tests/test_dependency_floors.py"],
}
DEEPSPEED_STEPS = 20


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: str) -> dict:
    pins = {}
    for line in open(path, encoding="utf-8"):
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonical(name)] = version.strip()
    return pins


def installed() -> dict:
    return {canonical(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}


def public(version: str) -> str:
    return version.split("+", 1)[0]


def differences(lock: dict, have: dict) -> list:
    """(package, installed, locked) for every installed package whose version is not the lock's."""
    return sorted((name, have[name], lock.get(name)) for name in have
                  if name != "sift-ds" and public(have[name]) != public(lock.get(name) or ""))


def culprit(output: str, changed: list) -> str:
    """The changed package whose files the failure's traceback names first, else all of them."""
    owners = importlib.metadata.packages_distributions()
    for module in re.findall(r"site-packages[/\\]([A-Za-z0-9_]+)", output):
        for dist in owners.get(module, []):
            for name, version, locked in changed:
                if name == canonical(dist):
                    return f"{dist} {version} (the lock has {locked or 'none'})"
    if not changed:
        return "nothing differs from the lock: the failure is not an upstream release"
    return "one of " + ", ".join(f"{n} {v} (lock {l or 'none'})" for n, v, l in changed)


def above_floors(have: dict) -> list:
    """(package, installed, floor) for every requirement of the installed sift_ds (extras included) whose
    installed release is not its floor's (2.7 matches 2.7.0 and 2.7.1, not 2.8.0)."""
    from packaging.version import Version

    from sift_ds.versions import floors

    found = []
    for name, floor in sorted(floors().items()):
        version = have.get(canonical(name))
        if version is not None and Version(version).release[:len(floor.release)] != floor.release:
            found.append((name, version, str(floor)))
    return found


def run(cmd, env, timeout=1500):
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def deepspeed_run(env) -> tuple:
    with tempfile.TemporaryDirectory() as out:
        cmd = [os.path.join(os.path.dirname(sys.executable), "deepspeed"), "--num_gpus", "2",
               "launch/pretrain_bert.py", "--ds_config", "ds_configs/tiny_cpu_sift.json", "--output_dir", out,
               "--tokenizer", "ds_configs/tokenizers/pydoc_wordpiece_4096", "--max_steps", str(DEEPSPEED_STEPS),
               "--seq_len", "64", "--log_interval", "5", "--eval_interval", "0", "--sift_warmup_steps", "5",
               "--cache_dir", os.path.join(out, "cache")]
        rc, output = run(cmd, env)
        if rc != 0:
            return rc, output
        records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
        last = records[-1]
        ok = last["step"] == DEEPSPEED_STEPS and math.isfinite(last["train_loss"]) and last["val_acc"] is not None
        return (0 if ok else 1), output + f"\nlast metrics record: {last}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", default="requirements/lock.txt")
    parser.add_argument("--name", default="test-latest", help="the make target, for the closing lines")
    parser.add_argument("--at_floors", action="store_true",
                        help="fail unless every requirement of setup.py is installed at its floor (test-oldest)")
    args = parser.parse_args()
    have = installed()
    changed = differences(read_lock(os.path.join(REPO, args.lock)), have)
    print("differ from the lock:" if changed else "every installed version is the lock's")
    for name, version, locked in changed:
        print(f"  {name} {version} (lock {locked or 'none'})")
    lifted = above_floors(have) if args.at_floors else []
    for name, version, floor in lifted:
        print(f"{args.name}: {name} {version} is installed, not setup.py's floor {floor}: another floor needs "
              f"more (uv pip tree --invert --show-version-specifiers --package {name} says which): raise {name}'s "
              f"floor in setup.py")
    if lifted:
        return 1
    if args.at_floors:
        print("[ok] every requirement of setup.py is installed at its floor", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", TRITON_INTERPRET="1", DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1")
    parts = [(name, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *ids])
             for name, ids in PYTEST_PARTS.items()]
    parts.insert(1, (f"deepspeed {DEEPSPEED_STEPS} steps", None))
    failed = []
    for name, cmd in parts:
        rc, output = deepspeed_run(env) if cmd is None else run(cmd, env)
        tail = [line for line in output.strip().splitlines() if line.strip()][-1:] or [""]
        print(f"[{'ok' if rc == 0 else 'FAILED'}] {name}: {tail[0][:200]}", flush=True)
        if rc != 0:
            print(output[-6000:])
            failed.append((name, culprit(output, changed)))
    for name, blame in failed:
        print(f"{args.name}: {name} failed: broke with {blame}")
    if not failed:
        print(f"{args.name}: ok ({len(changed)} installed versions differ from the lock)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
