#!/usr/bin/env python3
"""The GPU check: one prepared run that measures what only a GPU can, in under 9 minutes on one H100 / H200.

    python benchmarks/gpu_check.py [--dry] [--out DIR]        (make gpu-check [DRY=1])

Phases, each in its own process with its own time budget (a phase that fails or runs out of time is
recorded, and the others still run):

1. ``wheels``  -- installs the wheels of ``.whl/`` (if present) into /tmp/site with
   ``pip install --no-index --no-deps --target``: nothing is fetched. It also installs sift_ds itself,
   built from a copy of the checkout, into /tmp/gpu_check_package (setup.py puts the Triton kernels of
   ``kernels/ops`` there as ``sift_ds.kernels.ops``; no checkout on ``PYTHONPATH`` does). Both go on
   the PYTHONPATH of every later phase, /tmp/site/bin on their PATH. DeepSpeed's FusedAdam then
   starts its JIT build in the background (1-2 minutes of nvcc), while the next phase runs.
2. ``scorer``  -- the fused Triton scorer (loss and entropy) against bf16 eager PyTorch,
   ``torch.compile`` of it, Liger-Kernel's fused linear cross-entropy and Cut Cross-Entropy (where
   they import) at the BERT-base selection shape (~4,915 masked rows, H 768, V 30,522) and a large
   vocabulary (8,192 rows, H 4,096, V 128,256). ``triton.testing.do_bench`` medians; every output
   checked against the fp32 reference (itself against float64) before its time counts; TFLOP/s
   (2 N H V / time), the fraction of a bf16 matmul peak measured in the same run (8192^3) and of
   the datasheet, the extra peak memory over the inputs, the autotuner's choice.
3. ``tests``   -- the CUDA-only tests (compiled kernels against float64, no host syncs, fp16 on one
   GPU), in parallel under pytest-xdist where it imports.
4. ``step``    -- one BERT-base DeepSpeed engine (seq 512, ZeRO-2, bf16) stepped three ways: vanilla
   (micro-batch 32) and SIFT (gross 64 -> 32, exit layer 1, loss) with the fused and the torch
   scorer: step time, selection time and share (CUDA events), trained tokens/s. Then a second
   engine compiled with inductor (``sift_ds.compiling``: the padded masked-positions-only head,
   DeepSpeed's ``engine.compile``, the compiled prefix forward), vanilla and SIFT: the same figures,
   the warm-up (compile) seconds, and the graphs compiled and graph breaks after the warm-up (0, 0).

It prints one short table last and writes gpu_check.json and the phases' logs to --out (8 files).

This script is the orchestration (the wheels, the budgets, the phases' processes, the report); the
measurements of the ``scorer`` and ``step`` phases are ``gpu_check_phases.py``, run one process each.

``--dry`` runs the same phases on the CPU at tiny shapes (the Triton kernels under
TRITON_INTERPRET=1, ``torch.compile`` with the eager backend, the tests collected but not run, no
wheel install, no FusedAdam build), so that CI keeps this script working
(tests/test_gpu_check.py). Its figures mean nothing. Without --dry, TRITON_INTERPRET is removed
from the environment: Triton 3.6's interpreter crashes on these kernels.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
PHASES_SCRIPT = os.path.join(HERE, "gpu_check_phases.py")  # the measurements, one process per phase
SITE = "/tmp/site"
WHEELS = os.path.join(REPO, ".whl")
EXTENSIONS = "/tmp/gpu_check_torch_extensions"
PACKAGE = "/tmp/gpu_check_package"  # sift_ds installed from the checkout (outside --out: it does not come back)  # a fresh JIT-build folder: no stale lock from another run
CUDA_TESTS = (
    "tests/test_triton_scorer.py",
    "tests/test_triton_topk.py",
    "tests/test_kernel_api_errors.py",
    "tests/test_select_matches_hf.py",
    "tests/test_distributed.py::test_fp16_single_gpu",
)
# Seconds per phase (wall clock, start-up included); the phases run one after the other, so the
# whole stays under 9 minutes. A phase past its budget is killed with everything it started.
BUDGETS = {"wheels": 45, "scorer": 165, "tests": 145, "step": 150}
# The dry run's are upper bounds for a slow CI machine (killing DeepSpeed's first JIT build of its CPU
# comm op would leave a lock that hangs every later start in that environment).
DRY_BUDGETS = {"wheels": 45, "scorer": 240, "tests": 240, "step": 240}
FUSED_ADAM_WAIT = 60  # of the tests' budget, the most spent waiting for the background FusedAdam build
FILES = ("gpu_check.json", "gpu_check.log", "wheels.log", "package.log", "fused_adam_build.log", "scorer.log",
         "tests.log", "step.log")
PACKAGE_SOURCES = ("setup.py", "README.md", "sift_ds", "kernels")  # what setup.py builds sift_ds from


# ------------------------------------------------------------------------------------------------
# Driver (no torch import here: the wheels must be on the path before anything imports them)
# ------------------------------------------------------------------------------------------------


class Log:
    """Prints and appends to gpu_check.log."""

    def __init__(self, path):
        self.file = open(path, "w")

    def __call__(self, *parts):
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()


def run_bounded(cmd, timeout, log_path, env, cwd=REPO):
    """Run ``cmd`` in its own process group, output to ``log_path``; past ``timeout`` seconds the whole
    group is killed. Returns (return code or None when killed, seconds)."""
    start = time.monotonic()
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            rc = None
        kill_group(proc)  # whatever the phase left running (xdist workers, ranks) goes too
        proc.wait()
    return rc, time.monotonic() - start


def kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def phase_status(rc, seconds, budget):
    if rc is None:
        return f"timed out after {budget} s"
    return "ok" if rc == 0 else f"failed (exit {rc})"


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(tmp, path)


def install_wheels(dry, env, out, budget, log):
    wheels = sorted(glob.glob(os.path.join(WHEELS, "*.whl")))
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-cache-dir", "--upgrade",
           "--target", SITE, *wheels]
    rec = {"wheels": [os.path.basename(w) for w in wheels], "command": " ".join(cmd[:10] + [".whl/*.whl"])}
    if not wheels:
        return dict(rec, status="skipped (no .whl/ folder: the packages must already be installed)"), False
    if dry:
        return dict(rec, status="skipped (dry run: nothing is installed)"), False
    log(f"[wheels] installing {len(wheels)} wheels into {SITE}")
    env = {k: v for k, v in env.items() if k != "PIP_CONSTRAINT"}  # the Makefile's pin is for the CPU venv
    rc, seconds = run_bounded(cmd, budget, os.path.join(out, "wheels.log"), env)
    return dict(rec, status=phase_status(rc, seconds, budget), seconds=round(seconds, 1)), rc == 0


FUSED_ADAM_BUILD = (
    "import time; t = time.time()\n"
    "from deepspeed.accelerator import get_accelerator\n"
    "get_accelerator().create_op_builder('FusedAdamBuilder').load()\n"
    "print(f'FusedAdam built and loaded in {time.time() - t:.1f} s')\n"
)


def start_fused_adam_build(dry, env, out):
    """DeepSpeed's FusedAdam (used by the tests' engines and the step phase) JIT-builds with nvcc
    on first use: start that now, in the background, in a fresh extensions folder."""
    if dry:
        return None
    for lock in glob.glob(os.path.join(EXTENSIONS, "*", "lock")):  # left by a killed build of an earlier run
        os.remove(lock)
    log = open(os.path.join(out, "fused_adam_build.log"), "w")
    return subprocess.Popen([sys.executable, "-c", FUSED_ADAM_BUILD], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def run_phase(name, dry, env, out, work, budget, log, extra=()):
    result = os.path.join(work, f"{name}.json")
    cmd = [sys.executable, PHASES_SCRIPT, name, "--result", result, "--budget", str(budget),
           *(["--dry"] if dry else []), *extra]
    log(f"[{name}] running (budget {budget} s)")
    rc, seconds = run_bounded(cmd, budget + 5, os.path.join(out, f"{name}.log"), env)
    data = read_json(result)
    data.update(status=phase_status(rc, seconds, budget), seconds=round(seconds, 1))
    if data.get("error"):
        data["status"] = f"failed: {data['error']}"
    log(f"[{name}] {data['status']} in {seconds:.0f} s")
    return data


def run_tests(dry, env, out, budget, log, build):
    """The CUDA-only tests, under xdist where it imports; the dry run only collects them."""
    start = time.monotonic()
    if build is not None and build.poll() is None:
        log(f"[tests] waiting up to {FUSED_ADAM_WAIT} s for the FusedAdam build")
        try:
            build.wait(timeout=FUSED_ADAM_WAIT)
        except subprocess.TimeoutExpired:
            log("[tests] the FusedAdam build is still running; the tests that need it wait for it")
    remaining = max(int(budget - (time.monotonic() - start)), 10)
    # Run from --out, not the checkout: ``python -m`` puts its working directory first on sys.path, and the
    # checkout's sift_ds/ lacks the kernels that the installed package has.
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", "--rootdir", REPO,
           "-c", os.path.join(REPO, "pytest.ini"), *(os.path.join(REPO, t) for t in CUDA_TESTS)]
    if dry:
        cmd.append("--collect-only")
    else:
        cmd.append(f"--timeout={min(remaining, 120)}")
        if has_module(env, "xdist"):
            cmd += ["-n", str(min(8, os.cpu_count() or 1))]
    log(f"[tests] {' '.join(cmd[2:])} (budget {remaining} s)")
    rc, seconds = run_bounded(cmd, remaining, os.path.join(out, "tests.log"), env, cwd=out)
    summary = last_pytest_summary(os.path.join(out, "tests.log"))
    status = phase_status(rc, seconds, remaining)
    rec = {"status": status, "seconds": round(time.monotonic() - start, 1),
           "summary": summary, "command": " ".join(cmd[2:])}
    rec.update(parse_counts(summary))
    log(f"[tests] {status}: {summary}")
    return rec


def has_module(env, name):
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({name!r}) is None)"
    return subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def last_pytest_summary(path):
    try:
        lines = [ln.strip("= \n") for ln in open(path, errors="replace")]
    except OSError:
        return ""
    pattern = re.compile(r"\d+ (passed|failed|error|errors|skipped|tests? collected|deselected)")
    hits = [ln for ln in lines if pattern.search(ln)]
    return hits[-1] if hits else ""


def parse_counts(summary):
    return {key: int(n) for n, key in re.findall(r"(\d+) (?:tests? )?(passed|failed|errors?|skipped|collected)", summary)}


def host_info():
    """Driver version, Python and date; the scorer phase adds the device, torch and Triton versions."""
    info = {"python": sys.version.split()[0],
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    smi = shutil.which("nvidia-smi")
    if smi:
        q = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True)
        info["driver"] = q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout.strip() else None
    return info


def install_package(env, out, budget, log):
    """sift_ds as setup.py installs it, into PACKAGE: pip builds it offline, without its dependencies,
    from a copy of the checkout (so that the build leaves nothing in the checkout)."""
    target, source = PACKAGE, PACKAGE + "_source"
    for path in (target, source):
        shutil.rmtree(path, ignore_errors=True)
    os.makedirs(source)
    for part in PACKAGE_SOURCES:
        if os.path.isdir(os.path.join(REPO, part)):
            shutil.copytree(os.path.join(REPO, part), os.path.join(source, part),
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(os.path.join(REPO, part), os.path.join(source, part))
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation",
           "--no-cache-dir", "--target", target, source]
    log(f"[wheels] installing sift_ds into {target}")
    env = {k: v for k, v in env.items() if k != "PIP_CONSTRAINT"}
    rc, seconds = run_bounded(cmd, budget, os.path.join(out, "package.log"), env)
    shutil.rmtree(source, ignore_errors=True)
    return {"status": phase_status(rc, seconds, budget), "seconds": round(seconds, 1)}, (target if rc == 0 else None)


def phase_env(dry, site_ok, package=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    paths = (([SITE] if site_ok else []) + ([package] if package else [])
             + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if site_ok:
        env["PATH"] = os.path.join(SITE, "bin") + os.pathsep + env.get("PATH", "")
    if dry:
        env.update(TRITON_INTERPRET="1", DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="")
    else:
        env.pop("TRITON_INTERPRET", None)  # Triton 3.6's interpreter crashes on these kernels
        env["TORCH_EXTENSIONS_DIR"] = EXTENSIONS
    return env


def main_driver(args):
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    for name in FILES:
        if os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    work = os.path.join(out, ".phases")  # the phases' own JSON, merged into gpu_check.json
    os.makedirs(work, exist_ok=True)
    log = Log(os.path.join(out, "gpu_check.log"))
    budgets = DRY_BUDGETS if args.dry else BUDGETS
    started = time.monotonic()
    log(f"GPU check{' (dry run on the CPU: the figures mean nothing)' if args.dry else ''}, output in {out}")

    report = {"dry": args.dry, "budgets_s": budgets}
    report["wheels"], site_ok = install_wheels(args.dry, phase_env(args.dry, False), out, budgets["wheels"], log)
    log(f"[wheels] {report['wheels']['status']}")
    report["package"], package = install_package(phase_env(args.dry, site_ok), out, budgets["wheels"], log)
    log(f"[wheels] sift_ds: {report['package']['status']}")
    env = phase_env(args.dry, site_ok, package)
    report["env"] = host_info()
    build = start_fused_adam_build(args.dry, env, out)
    try:
        report["scorer"] = run_phase("scorer", args.dry, env, out, work, budgets["scorer"], log)
        report["env"].update(report["scorer"].pop("env", {}))
        report["tests"] = run_tests(args.dry, env, out, budgets["tests"], log, build)
        fused = build is not None and build.poll() == 0
        report["fused_adam"] = ("skipped (dry run)" if build is None else "built" if fused
                                else "not ready (the step phase uses torch AdamW)")
        report["step"] = run_phase("step", args.dry, env, out, work, budgets["step"], log,
                                   extra=["--fused-adam"] if fused else [])
    finally:
        if build is not None:
            kill_group(build)
    shutil.rmtree(work, ignore_errors=True)
    report["total_s"] = round(time.monotonic() - started, 1)
    write_json(os.path.join(out, "gpu_check.json"), report)
    for line in table(report):
        log(line)
    failed = [p for p in ("wheels", "package", "scorer", "tests", "step")
              if not str(report[p].get("status", "")).startswith(("ok", "skipped"))]
    failed += ["scorer checks"] if any(r.get("check", "ok") != "ok" for r in report["scorer"].get("rows", [])) else []
    failed += ["step check"] if not report["step"].get("score_check", "ok").endswith("ok") else []
    return 1 if failed else 0


def table(report):
    """The short table printed last."""
    env = report.get("env", {})
    lines = ["", f"== GPU check, {env.get('date')}: {env.get('device')} | driver {env.get('driver')} | "
                 f"torch {env.get('torch')} | triton {env.get('triton')} | {report['total_s']:.0f} s in all"
                 + (" | DRY RUN: figures mean nothing" if report["dry"] else "")]
    for name in ("wheels", "scorer", "tests", "step"):
        rec = report.get(name, {})
        lines.append(f"  {name:<7} {rec.get('status', '-')}" + (f" ({rec['seconds']:.0f} s)" if "seconds" in rec else ""))
    tests = report.get("tests", {})
    if tests.get("summary"):
        lines.append(f"  tests: {tests['summary']}")
    sc = report.get("scorer", {})
    if sc.get("rows"):
        peak = sc.get("peak_tflops")
        lines.append(f"-- scorer: do_bench medians; peak = {sc.get('peak_of')} here, {peak} TFLOP/s; "
                     f"sheet = datasheet {sc.get('datasheet_tflops')}")
        lines.append(f"  {'shape':<11} {'impl':<13} {'crit':<7} {'ms':>8} {'TFLOP/s':>8} {'%peak':>6} {'%sheet':>6} "
                     f"{'+MiB':>7}  check  config")
        for r in sc["rows"]:
            if "ms" not in r:
                lines.append(f"  {r['shape']:<11} {r['impl']:<13} {r.get('criterion') or '-':<7} {r.get('status', '')}")
                continue
            lines.append(
                f"  {r['shape']:<11} {r['impl']:<13} {r.get('criterion') or '-':<7} {r['ms']:>8.3f} {r['tflops']:>8.1f} "
                f"{_pct(r.get('fraction_of_peak')):>6} {_pct(r.get('fraction_of_datasheet')):>6} "
                f"{r.get('extra_mem_mib', 0):>7.0f}  {r.get('check', '-'):<5}  {r.get('config') or ''}")
    st = report.get("step", {})
    if st.get("arms"):
        lines.append(f"-- step: {st.get('setup')}")
        lines.append(f"  {'arm':<16} {'step ms':>8} {'select ms':>9} {'share':>6} {'trained tok/s':>13} {'vs vanilla':>10}"
                     f"  after warm-up")
        for name, a in st["arms"].items():
            if "step_ms" not in a:
                lines.append(f"  {name:<16} {a.get('status', '')}")
                continue
            after = a.get("after_warm_up")
            lines.append(f"  {name:<16} {a['step_ms']:>8.1f} {a.get('select_ms', 0):>9.1f} {_pct(a.get('selection_share')):>6} "
                         f"{a['trained_tokens_per_s']:>13.0f} {a.get('tokens_per_s_vs_vanilla', 1.0):>9.2f}x"
                         + (f"  {after['graphs']} graphs, {after['graph_breaks']} breaks" if after else ""))
        if st.get("compile"):
            lines.append(f"  compiled arms: {st['compile']}")
        if st.get("score_check"):
            lines.append(f"  fused vs torch scorer on one gross batch: {st['score_check']}")
    return lines


def _pct(x):
    return "-" if x is None else f"{100 * x:.0f}%"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry", action="store_true", help="the same phases on the CPU at tiny shapes (CI)")
    p.add_argument("--out", default=os.path.join(REPO, "runs", "gpu_check"), help="folder for the JSON and logs")
    return main_driver(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
