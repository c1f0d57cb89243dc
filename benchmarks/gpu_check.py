#!/usr/bin/env python3
"""The GPU check: one prepared run that measures what only a GPU can, in under 8 minutes on one H100 / H200.

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
   scorer: step time, selection time and share (CUDA events), trained tokens/s.

It prints one short table last and writes gpu_check.json and the phases' logs to --out (8 files).

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
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
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
# whole stays under 8 minutes. A phase past its budget is killed with everything it started.
BUDGETS = {"wheels": 45, "scorer": 165, "tests": 145, "step": 90}
# The dry run's are upper bounds for a slow CI machine (killing DeepSpeed's first JIT build of its CPU
# comm op would leave a lock that hangs every later start in that environment).
DRY_BUDGETS = {"wheels": 45, "scorer": 240, "tests": 240, "step": 240}
# Seconds a scorer item needs left in the phase's budget to start (torch.compile's compilation is slow).
MIN_LEFT = {"bf16-compile": 40}
FUSED_ADAM_WAIT = 60  # of the tests' budget, the most spent waiting for the background FusedAdam build
# Score tolerance against the fp32 reference (max |difference| over sequences): fp32 accumulation
# (Triton), logits rounded to bf16 (eager bf16, compile, Liger, CCE: |z| / 256 per logit).
TOL = {"triton": 2e-3, "bf16-eager": 5e-2, "bf16-compile": 5e-2, "liger": 5e-2, "cce": 5e-2}
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
    cmd = [sys.executable, os.path.abspath(__file__), "--phase", name, "--result", result, "--budget",
           str(budget), *(["--dry"] if dry else []), *extra]
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
        lines.append(f"  {'arm':<11} {'step ms':>8} {'select ms':>9} {'share':>6} {'trained tok/s':>13} {'vs vanilla':>10}")
        for name, a in st["arms"].items():
            if "step_ms" not in a:
                lines.append(f"  {name:<11} {a.get('status', '')}")
                continue
            lines.append(f"  {name:<11} {a['step_ms']:>8.1f} {a.get('select_ms', 0):>9.1f} {_pct(a.get('selection_share')):>6} "
                         f"{a['trained_tokens_per_s']:>13.0f} {a.get('tokens_per_s_vs_vanilla', 1.0):>9.2f}x")
        if st.get("score_check"):
            lines.append(f"  fused vs torch scorer on one gross batch: {st['score_check']}")
    return lines


def _pct(x):
    return "-" if x is None else f"{100 * x:.0f}%"


# ------------------------------------------------------------------------------------------------
# Phases (each in its own process)
# ------------------------------------------------------------------------------------------------


class Phase:
    """A phase's results, written after every item so that a killed phase keeps what it measured."""

    def __init__(self, path, budget, reserve):
        self.path, self.start, self.budget, self.reserve = path, time.monotonic(), budget, reserve
        self.data = {}
        self.save()

    def left(self):
        return self.budget - self.reserve - (time.monotonic() - self.start)

    def save(self):
        write_json(self.path, self.data)


def timer(cuda):
    """Median milliseconds of a no-argument callable: ``triton.testing.do_bench`` on CUDA (events,
    L2 flushed between calls), one host-timed call on the CPU (the dry run's figures mean nothing)."""
    if cuda:
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")

    def host(fn, reps=1):
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return 1e3 * sorted(times)[len(times) // 2]

    return host


def score_error(out, want):
    """Max |out - want| over the finite reference scores; inf when the set of finite scores differs."""
    import torch

    if out.shape != want.shape or not torch.equal(torch.isfinite(out), torch.isfinite(want)):
        return float("inf")
    finite = torch.isfinite(want)
    return (out[finite].double() - want[finite].double()).abs().max().item() if finite.any() else 0.0


def phase_scorer(args):
    import torch

    import bench_scorer as bs
    from sift_ds.kernels.reference import packed_sequence_scores_torch

    cuda = torch.cuda.is_available() and not args.dry
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    bench = timer(cuda)
    shapes = ({"bert-base": (64, 512, 0.15, 768, 30522), "large-vocab": (16, 512, 1.0, 4096, 128256)} if cuda
              else {"tiny": (4, 32, 0.25, 48, 300)})
    phase = Phase(args.result, args.budget, reserve=10)
    d = phase.data
    import triton

    import sift_ds

    d["env"] = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
                "triton": triton.__version__, "sift_ds": os.path.dirname(sift_ds.__file__), "capability": list(torch.cuda.get_device_capability()) if cuda else None}
    d.update(rows=[], dtype=str(dtype))
    d["datasheet_tflops"] = bs.datasheet_peak(d["env"]["device"]) if cuda else None

    # The bf16 matmul peak of this device, now: an 8192^3 product on random data.
    n = 8192 if cuda else 256
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    d["peak_tflops"] = float(f"{2 * n**3 / bench(lambda: a @ b) / 1e9:.4g}")
    d["peak_of"] = f"{str(dtype).replace('torch.', '')} {n}^3 matmul"
    del a, b
    phase.save()

    inputs, refs = {}, {}

    def shape_inputs(shape):
        if shape not in inputs:
            inputs[shape] = bs.build_inputs(*shapes[shape], device=device, dtype=dtype)
        return inputs[shape]

    def reference(shape, criterion, bias=True):
        """The fp32 reference twin's scores, checked against float64 math first."""
        key = (shape, criterion, bias)
        if key not in refs:
            x = shape_inputs(shape)
            ref = packed_sequence_scores_torch(x["rows"], x["w"], x["b"] if bias else None, x["targets"], x["seq"],
                                               x["num_seqs"], criterion)
            err = score_error(ref, bs.float64_scores(x, criterion, bias))
            if not err <= 2e-4:
                raise AssertionError(f"the fp32 reference is {err:.3g} off float64 math ({shape}, {criterion})")
            refs[key] = ref
        return refs[key]

    def make(impl, criterion, x):
        args6 = (x["rows"], x["w"], x["b"], x["targets"], x["seq"], x["num_seqs"])
        if impl == "matmul":
            return lambda: x["rows"] @ x["w"].T
        if impl == "triton":
            from sift_ds.kernels.ops.triton_scorer import packed_sequence_scores_triton

            return lambda: packed_sequence_scores_triton(*args6, criterion)
        if impl == "bf16-eager":
            return lambda: bs.bf16_eager_scores(*args6, criterion)
        if impl == "bf16-compile":
            compiled = torch.compile(bs.bf16_eager_scores, backend="inductor" if cuda else "eager")
            return lambda: compiled(*args6, criterion)
        if impl == "liger":
            import liger_kernel  # noqa: F401

            return lambda: bs.liger_scores(*args6)
        import cut_cross_entropy  # noqa: F401

        return lambda: bs.cce_scores(x["rows"], x["w"], x["targets"], x["seq"], x["num_seqs"])

    items = []
    for shape in shapes:  # first everything but torch.compile, both shapes
        items += [(shape, "matmul", None), (shape, "triton", "loss"), (shape, "triton", "entropy"),
                  (shape, "bf16-eager", "loss"), (shape, "bf16-eager", "entropy"), (shape, "liger", "loss"),
                  (shape, "cce", "loss")]
    for shape in shapes:  # compiling is slow: last, so that a short budget drops it first
        items += [(shape, "bf16-compile", "loss"), (shape, "bf16-compile", "entropy")]

    for shape, impl, crit in items:
        row = {"shape": shape, "impl": impl, "criterion": crit}
        d["rows"].append(row)
        if phase.left() <= MIN_LEFT.get(impl, 0):
            row["status"] = "skipped: out of time"
            phase.save()
            continue
        if impl in ("liger", "cce") and not cuda:
            row["status"] = "skipped: needs CUDA"
            phase.save()
            continue
        x = shape_inputs(shape)
        try:
            fn = make(impl, crit, x)
        except ImportError as err:
            row["status"] = f"skipped: {err}"
            phase.save()
            continue
        try:
            with torch.no_grad():
                out = fn()  # compile / autotune outside the timing and the memory peak
                if impl != "matmul":
                    err = score_error(out, reference(shape, crit, bias=impl != "cce"))
                    row.update(max_abs_err=err, check="ok" if err <= TOL[impl] else f"FAIL (> {TOL[impl]})")
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    fn()
                    torch.cuda.synchronize()
                    row["extra_mem_mib"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
                ms = bench(fn)
        except Exception as err:  # recorded; the next item still runs
            row["status"] = f"error: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            phase.save()
            continue
        nrows, h = x["rows"].shape
        v = x["w"].shape[0]
        tflops = 2 * nrows * h * v / ms / 1e9
        row.update(rows=nrows, H=h, V=v, ms=round(ms, 4), tflops=float(f"{tflops:.4g}"),
                   fraction_of_peak=round(tflops / d["peak_tflops"], 3))
        if d["datasheet_tflops"]:
            row["fraction_of_datasheet"] = round(tflops / d["datasheet_tflops"], 3)
        if impl == "triton":
            from sift_ds.kernels.ops.triton_scorer import last_config

            cfg = last_config(device)
            row["config"] = None if cfg is None else str(cfg)
        phase.save()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def phase_step(args):
    # DeepSpeed on one process without its launcher: the torch.distributed variables, set here
    # (without them DeepSpeed may try MPI discovery, mpi4py being installed).
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()))
    import torch

    import sift_ds
    from sift_ds.pretrain.models import build_bert

    cuda = torch.cuda.is_available() and not args.dry
    phase = Phase(args.result, args.budget, reserve=5)
    d = phase.data
    preset, vocab, seq, micro, exit_layer = ("base", 30522, 512, 32, 1) if cuda else ("tiny", 300, 32, 2, 1)
    reps, warm = (10, 3) if cuda else (1, 1)
    optimizer = "DeepSpeed FusedAdam" if args.fused_adam else "torch AdamW (DeepSpeed's torch_adam)"
    d["setup"] = (f"BERT-{preset} (sparse MLM head), seq {seq}, gross {2 * micro} -> {micro}, exit layer {exit_layer}, "
                  f"loss, {'bf16' if cuda else 'fp32'}, ZeRO-2, {optimizer}, median of {reps} steps")
    d["arms"] = {}
    phase.save()

    torch.manual_seed(0)
    model = build_bert(preset, vocab_size=vocab, max_position_embeddings=max(seq, 512), sparse_head=True)
    params = {"lr": 1e-4, "weight_decay": 0.01}
    if not args.fused_adam:
        params["torch_adam"] = True
    cfg = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": 1,
           "optimizer": {"type": "AdamW", "params": params}, "zero_optimization": {"stage": 2},
           "gradient_clipping": 1.0, "steps_per_print": 10**9}
    if cuda:
        cfg["bf16"] = {"enabled": True}
    sift_cfg = sift_ds.SiftConfig(exit_layer=exit_layer, keep_ratio=0.5, scope="local", kernel="triton")
    fused = sift_ds.initialize(model=model, config=cfg, sift_config=sift_cfg)[0]
    # The same DeepSpeed engine behind three SIFT settings: one model, one optimizer.
    arms = {
        "vanilla": sift_ds.SiftEngine(fused.engine, fused.adapter, sift_ds.SiftConfig(enabled=False)),
        "sift-fused": fused,
        "sift-torch": sift_ds.SiftEngine(fused.engine, fused.adapter, sift_ds.SiftConfig(
            exit_layer=exit_layer, keep_ratio=0.5, scope="local", kernel="torch")),
    }
    g = torch.Generator().manual_seed(0)

    def batch(rows):  # on the host, as a data loader gives it (the engine moves it)
        ids = torch.randint(5, vocab, (rows, seq), generator=g)
        labels = torch.where(torch.rand(rows, seq, generator=g) < 0.15, ids, torch.full_like(ids, -100))
        inputs = torch.where(labels != -100, torch.full_like(ids, 4), ids)
        return {"input_ids": inputs, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
                "labels": labels}

    # The two scorers must agree on the same gross batch before their times mean anything.
    probe = batch(2 * micro)
    a, b = arms["sift-fused"].select(probe).scores, arms["sift-torch"].select(probe).scores
    err = score_error(a.cpu(), b.cpu())
    d["score_check"] = f"max |difference| {err:.2e}, " + ("ok" if err <= 1e-2 else "FAIL (> 1e-2)")
    phase.save()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for name, arm in arms.items():
        rec = d["arms"][name] = {}
        if phase.left() <= 0:
            rec["status"] = "skipped: out of time"
            phase.save()
            continue
        batches = [batch(arm.gross_batch_size) for _ in range(warm + reps)]
        steps, selects, shares = [], [], []
        for i, gross in enumerate(batches):
            sync()
            t = time.perf_counter()
            loss = arm.train_step(gross)
            sync()
            seconds = time.perf_counter() - t
            stats = arm.stats
            if not torch.isfinite(loss):
                raise AssertionError(f"{name}: non-finite loss at step {i}")
            if i >= warm:
                steps.append(seconds)
                selects.append(stats["sift/selection_time_s"])
                shares.append(stats["sift/selection_share"])
        step_s = sorted(steps)[len(steps) // 2]
        rec.update(step_ms=round(1e3 * step_s, 2), select_ms=round(1e3 * sorted(selects)[len(selects) // 2], 2),
                   selection_share=round(sorted(shares)[len(shares) // 2], 4) if name != "vanilla" else None,
                   gross=arm.gross_batch_size, trained_rows=micro,
                   trained_tokens_per_s=round(micro * seq / step_s, 1),
                   scored_tokens_per_s=round(arm.gross_batch_size * seq / step_s, 1))
        if "vanilla" in d["arms"] and "trained_tokens_per_s" in d["arms"]["vanilla"]:
            rec["tokens_per_s_vs_vanilla"] = round(rec["trained_tokens_per_s"] / d["arms"]["vanilla"]["trained_tokens_per_s"], 3)
        phase.save()


PHASES = {"scorer": phase_scorer, "step": phase_step}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry", action="store_true", help="the same phases on the CPU at tiny shapes (CI)")
    p.add_argument("--out", default=os.path.join(REPO, "runs", "gpu_check"), help="folder for the JSON and logs")
    p.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--budget", type=float, default=60, help=argparse.SUPPRESS)
    p.add_argument("--fused-adam", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase is None:
        return main_driver(args)
    if HERE not in sys.path:
        sys.path.insert(0, HERE)  # bench_scorer
    try:
        PHASES[args.phase](args)
    except Exception as err:
        data = read_json(args.result)
        data["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
        write_json(args.result, data)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
