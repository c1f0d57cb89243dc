"""Hardware checks without hardware: every autotune config of the scorer kernels compiled ahead of time
for sm_80 (A100) and sm_90 (H100) by Triton's own compiler, with the runtime's argument specialisation
(``sift_ds.kernels.ops.aot``), then inspected with ``ptxas -v``, ``cuobjdump`` and ``nvdisasm`` from the
triton wheel. Shapes: BERT-base (tied head with bias), Llama 3 (V 128,256, H 4,096) and Qwen2
(V 151,936, H 3,584), the last two untied without bias.

Each config must compile, spill nothing, fit the architecture's shared memory per block, use
tensor-core MMA in its SASS (HMMA on sm_80, HGMMA = wgmma on sm_90), and keep its shared-memory
pipeline running across vocabulary tiles (no full ``async_wait`` inside a loop). Three control
compiles show the checks can fail: the configs excluded on sm_80 do spill there, and the
un-flattened V loop does drain at every tile.

CI time: every compile (the checked ones and the controls) runs once, in one pool of two processes,
and all assertions read the same reports. By default the checked compiles are bf16 (45 with the
controls); ``SIFT_AOT_FULL=1`` adds the fp16 BERT-base compiles (fp16 differs from bf16 only in the
dtype). Triton caches compiles (``~/.triton/cache``, or ``TRITON_CACHE_DIR``).
"""
import os

import pytest

pytest.importorskip("triton")

from sift_ds.kernels.ops import aot  # noqa: E402
from sift_ds.kernels.ops import scorer_launch as launch  # noqa: E402

PROBLEM = aot.compile_api_problem()
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=f"ahead-of-time compile unavailable: {PROBLEM}")
FULL = os.environ.get("SIFT_AOT_FULL") == "1"


@pytest.fixture(scope="module")
def compiled():
    """(checked reports, control reports), from one pool run of every compile."""
    jobs = aot.all_stats_jobs(full=FULL)
    controls = aot.control_jobs()
    reports = aot.run_all(processes=2, jobs=jobs + controls)
    return reports[: len(jobs)], reports[len(jobs):]


@pytest.fixture(scope="module")
def reports(compiled):
    return compiled[0]


def label(r):
    return f"sm_{r.capability} {r.config} {r.shape} {r.dtype}"


def test_every_config_compiles_for_both_targets(reports):
    expected = {(cap, shape, dtype) for cap in aot.ARCHS for shape, sh in aot.SHAPES.items()
                for dtype in sh.dtypes if FULL or dtype == "bf16"}
    assert {(r.capability, r.shape, r.dtype) for r in reports} == expected
    assert {"llama3", "qwen2"} <= {r.shape for r in reports}
    for cap in aot.ARCHS:
        for shape in aot.SHAPES:
            configs = {r.config for r in reports if r.capability == cap and r.shape == shape}
            assert len(configs) == len(launch.cuda_configs(cap // 10)) >= 6, (cap, shape)


def test_ptxas_rerun_matches_tritons_build(reports):
    """ptxas -v is re-run with Triton's flags: its registers are those of the cubin Triton built."""
    differ = [(label(r), r.registers, r.built_registers) for r in reports if r.registers != r.built_registers]
    assert not differ, differ


def test_tensor_core_mma_in_sass(reports):
    missing = [label(r) for r in reports if r.mma == 0]
    assert not missing, f"no {aot.MMA} in the SASS of: {missing}"


def test_no_register_spills(reports):
    spilling = [(label(r), r.spill_bytes) for r in reports if r.spill_bytes]
    assert not spilling, f"ptxas -v reports spills: {spilling}"


def test_fits_shared_memory_and_one_cta_per_sm(reports):
    too_big = [(label(r), r.shared_bytes) for r in reports if not r.fits_shared or r.ctas_per_sm < 1]
    assert not too_big, f"shared memory over the per-block limit: {too_big}"


def test_pipeline_not_drained_per_vocab_tile(reports):
    draining = [label(r) for r in reports if r.drains_in_loop]
    assert not draining, f"async_wait 0 inside a loop (pipeline drained at every V tile): {draining}"


def test_small_kernels_compile_without_spills():
    for cap in aot.ARCHS:
        for r in aot.compile_small_kernels(cap):
            assert r.spill_bytes == 0 and r.fits_shared, label(r)


def test_controls_the_checks_can_fail(compiled):
    """The configs kept off sm_80 spill there; without flatten the V loop drains at every tile."""
    controls = compiled[1]
    assert len(controls) == 3
    *excluded, unflattened = controls
    assert all(r.spill_bytes > 0 for r in excluded), [(label(r), r.spill_bytes) for r in excluded]
    assert unflattened.config.endswith("unflattened") and unflattened.drains_in_loop > 0
