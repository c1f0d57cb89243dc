"""engine.select keeps exactly the top-k of early-exit scores computed by a direct HF forward."""
import pytest
import torch

import sift_ds
from tiny import ds_config, hf_reference_scores, mlm_batch, tiny_bert

LAYERS = 3
TOL = 1e-4


def distinct_layers(model, std=0.15, embedding_std=0.3):
    """Weights large enough that each layer changes the scores: with BERT's initialisation (std 0.02)
    the tied decoder makes every layer's logits near uniform, adjacent layers' entropies differ by
    ~1e-4, and a scorer reading the wrong layer would pass a 1e-4 tolerance."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.bert.encoder.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)
        embeddings = model.bert.embeddings.word_embeddings.weight  # tied to the MLM decoder
        embeddings.copy_(torch.randn(embeddings.shape, generator=g) * embedding_std)
    return model


@pytest.fixture(scope="module")
def engines(single_rank_dist):
    made = {}

    def get(criterion, exit_layer, keep_ratio=0.5):
        key = (criterion, exit_layer, keep_ratio)
        if key not in made:
            model = distinct_layers(tiny_bert(layers=LAYERS))
            cfg = ds_config(micro=4, criterion=criterion, exit_layer=exit_layer, keep_ratio=keep_ratio, scope="local")
            made[key] = sift_ds.initialize(model=model, config=cfg)[0]
        return made[key]

    return get


@pytest.mark.parametrize("criterion", ["loss", "entropy"])
@pytest.mark.parametrize("exit_layer", [1, 2, LAYERS])
def test_kept_rows_are_topk_of_hf_scores(engines, criterion, exit_layer):
    engine = engines(criterion, exit_layer)
    batch = mlm_batch(engine.gross_batch_size, seed=exit_layer)
    sel = engine.select(batch)
    ref = hf_reference_scores(engine.module, batch, exit_layer, criterion)

    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(sel.scores), finite)
    torch.testing.assert_close(sel.scores[finite].double(), ref[finite], atol=TOL, rtol=TOL)
    # The test can tell the layers apart: the neighbouring layers' scores are far outside the tolerance.
    for other in (exit_layer - 1, exit_layer + 1):
        if 1 <= other <= LAYERS:
            wrong = hf_reference_scores(engine.module, batch, other, criterion)[finite]
            assert (sel.scores[finite].double() - wrong).abs().max() > 100 * TOL, (exit_layer, other)

    order = sorted(range(len(ref)), key=lambda i: (ref[i].item(), -i), reverse=True)
    expected = sorted(order[: engine.micro_batch_size])
    assert sel.indices.tolist() == expected
    for key, value in batch.items():
        assert torch.equal(sel.batch[key], value[expected]), key
    # The selected rows are not the trivially first ones, and the no-label row is never kept.
    assert len(batch["labels"]) // 2 not in expected


def test_train_step_telemetry_and_dropout_restored(engines):
    engine = engines("loss", 1)
    engine.module.train()
    batch = mlm_batch(engine.gross_batch_size, seed=7)
    loss = engine.train_step(batch)
    assert torch.isfinite(loss)
    assert engine.module.training and all(m.training for m in engine.module.modules())
    stats = engine.stats
    assert stats["sift/kept_fraction"] == 0.5
    assert stats["sift/nonfinite_scores"] == 1.0  # the row with no labelled position
    assert stats["sift/score_kept_mean"] >= stats["sift/score_dropped_mean"]
    assert 0.0 < stats["sift/selection_share"] < 1.0
    assert stats["sift/warmup"] == 0.0


def test_short_gross_batch_keeps_its_share(engines):
    """A gross batch short of 8 rows (the last of an epoch) keeps round(rows * keep_ratio), as in every front-end."""
    engine = engines("loss", 1)
    sel = engine.select(mlm_batch(5))
    assert len(sel.indices) == 2 and sel.batch["input_ids"].shape[0] == 2  # round(2.5) = 2 (half to even)


def test_keep_ratio_one_keeps_everything(engines):
    engine = engines("entropy", 1, keep_ratio=1.0)
    batch = mlm_batch(4, seed=3)
    sel = engine.select(batch)
    assert sel.indices.tolist() == [0, 1, 2, 3]


def test_warmup_keeps_uniform_random_subset(single_rank_dist):
    model = tiny_bert(layers=2)
    engine = sift_ds.initialize(model=model, config=ds_config(micro=4, warmup_steps=3, scope="local"))[0]
    seen = set()
    for step in range(3):
        batch = mlm_batch(8, seed=step)
        sel = engine.select(batch)
        assert sel.warmup and torch.isnan(sel.scores).all()
        assert len(sel.indices) == 4 and len(set(sel.indices.tolist())) == 4
        seen.update(sel.indices.tolist())
        engine.train_step(batch)
        assert engine.stats["sift/warmup"] == 1.0
    assert len(seen) > 4  # not a fixed subset
    batch = mlm_batch(8, seed=9)
    sel = engine.select(batch)
    labelled_rows = (batch["labels"] != -100).any(1)
    assert not sel.warmup and torch.equal(torch.isfinite(sel.scores), labelled_rows)


def test_no_reference_to_the_gross_batch_after_the_step(engines):
    import gc
    import weakref

    engine = engines("loss", 1)
    batch = mlm_batch(engine.gross_batch_size, seed=11)
    refs = [weakref.ref(v) for v in batch.values()]
    engine.train_step(batch)
    assert engine.stats  # telemetry still readable
    del batch
    gc.collect()
    assert all(r() is None for r in refs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs only exist with a CUDA device")
def test_select_does_not_sync_the_host(engines):  # pragma: no cover - CUDA only
    engine = engines("entropy", 1)
    batch = {k: v.pin_memory() for k, v in mlm_batch(engine.gross_batch_size, seed=5).items()}
    engine.select(batch)  # warm up allocator / kernels
    torch.cuda.set_sync_debug_mode("error")
    try:
        engine.select(batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("criterion", ["loss", "entropy"])
def test_engine_with_triton_kernel_matches_hf(single_rank_dist, monkeypatch, criterion):
    pytest.importorskip("triton")
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    model = distinct_layers(tiny_bert(layers=LAYERS))
    cfg = ds_config(micro=4, criterion=criterion, exit_layer=2, kernel="triton", scope="local")
    engine = sift_ds.initialize(model=model, config=cfg)[0]
    batch = mlm_batch(engine.gross_batch_size, seed=21)
    sel = engine.select(batch)
    ref = hf_reference_scores(engine.module, batch, 2, criterion)
    finite = torch.isfinite(ref)
    torch.testing.assert_close(sel.scores[finite].double().cpu(), ref[finite], atol=TOL, rtol=TOL)
    for other in (1, 3):
        wrong = hf_reference_scores(engine.module, batch, other, criterion)[finite]
        assert (sel.scores[finite].double().cpu() - wrong).abs().max() > 100 * TOL, other
    order = sorted(range(len(ref)), key=lambda i: (ref[i].item(), -i), reverse=True)
    assert sel.indices.tolist() == sorted(order[: engine.micro_batch_size])


def test_initialize_training_data_yields_gross_batches(single_rank_dist):
    rows = mlm_batch(24, seed=4)
    dataset = [{k: v[i] for k, v in rows.items()} for i in range(24)]

    def collate(items):
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}

    model = tiny_bert(layers=2)
    engine, _, loader, _ = sift_ds.initialize(model=model, config=ds_config(micro=4, keep_ratio=0.5),
                                              training_data=dataset, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["input_ids"].shape == (8, 16)  # gross batch = micro / keep_ratio
    assert torch.isfinite(engine.train_step(batch))


def test_out_of_vocabulary_labels_are_refused_on_the_host_copy(engines):
    """The engine checks the loader's host labels (no device sync) before scoring."""
    from tiny import VOCAB

    engine = engines("loss", 1)
    batch = mlm_batch(engine.gross_batch_size, seed=11)
    batch["labels"][1, 3] = VOCAB + 5
    with pytest.raises(ValueError, match=f"label/target {VOCAB + 5} is outside the vocabulary"):
        engine.select(batch)
    batch["labels"][1, 3] = -7
    with pytest.raises(ValueError, match="label/target -7"):
        engine.select(batch)
