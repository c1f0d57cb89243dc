"""Hardware checks without hardware: every autotune config of the scorer kernels compiled ahead of time
for sm_80 (A100) and sm_90 (H100) by Triton's own compiler, at the BERT-base and large-vocabulary
shapes in bf16 and fp16, with the runtime's argument specialisation (``sift_ds.kernels.aot``), then
inspected with ``ptxas -v``, ``cuobjdump`` and ``nvdisasm`` from the triton wheel.

Each config must compile, spill nothing, fit the architecture's shared memory per block, use
tensor-core MMA in its SASS (HMMA on sm_80, HGMMA = wgmma on sm_90), and keep its shared-memory
pipeline running across vocabulary tiles (no full ``async_wait`` inside a loop). Two controls show
the checks can fail: the config excluded on sm_80 does spill there, and the un-flattened V loop
does drain at every tile. Compiles are cached by Triton (~/.triton/cache); a cold run takes ~2 min.
"""
import pytest

pytest.importorskip("triton")

from sift_ds.kernels import aot  # noqa: E402
from sift_ds.kernels import triton_scorer as ts  # noqa: E402

PROBLEM = aot.compile_api_problem()
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=f"ahead-of-time compile unavailable: {PROBLEM}")


@pytest.fixture(scope="module")
def reports():
    return aot.run_all(processes=2)


def label(r):
    return f"sm_{r.capability} {r.config} {r.shape} {r.dtype}"


def test_every_config_compiles_for_both_targets(reports):
    expected = {(cap, shape, dtype) for cap in aot.ARCHS for shape in aot.SHAPES for dtype in aot.DTYPES}
    assert {(r.capability, r.shape, r.dtype) for r in reports} == expected
    for cap in aot.ARCHS:
        configs = {r.config for r in reports if r.capability == cap}
        assert len(configs) == len(ts.cuda_configs(cap // 10)) >= 6, cap


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


def test_controls_the_checks_can_fail(monkeypatch):
    """The configs kept off sm_80 spill there; without flatten the V loop drains at every tile."""
    excluded = [c for c in ts.cuda_configs(9) if c not in ts.cuda_configs(8)]
    assert len(excluded) == 2
    assert all(aot.compile_stats(c, 80, "bert-base", "bf16").spill_bytes > 0 for c in excluded)
    monkeypatch.setattr(ts, "_FLATTEN_V_LOOP", False)
    assert aot.compile_stats(ts.cuda_configs(8)[0], 80, "bert-base", "bf16").drains_in_loop > 0
