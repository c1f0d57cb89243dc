"""The sparse-head BERTs give HF's dense loss and gradients (float64), with logits for masked rows only."""
import pytest
import torch
from transformers import BertForMaskedLM

from sift_ds.pretrain.models import bert_config, bert_presets, build_bert, build_model, family_presets, model_config
from tiny import VOCAB, mlm_batch


def _pair(objective):
    dense = build_bert("tiny", VOCAB, objective, max_position_embeddings=64, dropout=0.0).double()
    sparse = build_bert("tiny", VOCAB, objective, max_position_embeddings=64, dropout=0.0, sparse_head=True).double()
    sparse.load_state_dict(dense.state_dict())
    return dense, sparse


@pytest.mark.parametrize("objective", ["mlm", "mlm+nsp"])
def test_sparse_head_matches_dense_loss_and_grads(objective):
    dense, sparse = _pair(objective)
    batch = mlm_batch(6, seed=2)
    if objective == "mlm+nsp":
        batch["next_sentence_label"] = torch.tensor([0, 1, 0, 1, 1, 0])
    out_d, out_s = dense(**batch), sparse(**batch)
    torch.testing.assert_close(out_s.loss, out_d.loss, rtol=1e-10, atol=1e-10)
    out_d.loss.backward()
    out_s.loss.backward()
    for (name, p_d), p_s in zip(dense.named_parameters(), sparse.parameters()):
        assert (p_d.grad is None) == (p_s.grad is None), name
        if p_d.grad is not None:
            torch.testing.assert_close(p_s.grad, p_d.grad, rtol=1e-8, atol=1e-10, msg=name)
    n_masked = int((batch["labels"] != -100).sum())
    logits = out_s.logits if objective == "mlm" else out_s.prediction_logits
    assert logits.shape == (n_masked, VOCAB)


def test_sparse_head_without_labels_is_the_hf_forward(tmp_path):
    dense, sparse = _pair("mlm")
    batch = mlm_batch(3, seed=5)
    labels = batch.pop("labels")
    torch.testing.assert_close(sparse(**batch).logits, dense(**batch).logits)
    assert sparse(**batch).logits.shape[:2] == labels.shape
    sparse.save_pretrained(tmp_path)
    reloaded = BertForMaskedLM.from_pretrained(tmp_path).double()
    torch.testing.assert_close(reloaded(**batch).logits, dense(**batch).logits)


def test_presets_and_bad_objective():
    assert set(bert_presets()) == {"tiny", "mini", "small", "medium", "base", "large"}
    assert not set(bert_presets()) & set(family_presets())  # one table: the BERT family's in the registry
    cfg = bert_config("base", 30522)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (12, 768, 12)
    with pytest.raises(ValueError, match="objective"):
        build_bert("tiny", VOCAB, "clm")


@pytest.mark.parametrize("sparse", [False, True])
def test_flops_model_by_hand(sparse):
    from sift_ds.pretrain.metrics import FlopsModel

    L, H, I, V, P, T, k, f = 2, 64, 128, VOCAB, 64, 32, 1, 0.15
    model = build_bert("tiny", V, "mlm", max_position_embeddings=P, sparse_head=sparse)
    layer = 4 * (H * H + H) + 2 * H + (H * I + I) + (I * H + H) + 2 * H  # attention, LN, FFN, LN
    embeddings = V * H + P * H + 2 * H + 2 * H  # word, position, token type, LayerNorm
    head = (H * H + H) + 2 * H + V * H + V  # transform (dense + LN), tied decoder + bias
    n_without_positions = embeddings - P * H + L * layer + (head - V * H)
    head_share = f if sparse else 1.0
    train = 6 * (n_without_positions - head) + 6 * head_share * head + 12 * L * H * T
    select = 2 * k * layer + 4 * k * H * T + f * 2 * head
    flops = FlopsModel.for_masked_lm(model, T, k, f, sparse_head=sparse)
    assert flops.train_per_token == pytest.approx(train)
    assert flops.select_per_token == pytest.approx(select)


def test_mfu_is_against_a_gpu_peak_and_left_out_elsewhere():
    from sift_ds.pretrain.metrics import mfu

    # 2 devices of 100 TFLOP/s peak doing 50e12 FLOPs in 1 s: a quarter of their peak
    assert mfu(50e12, 1.0, 100.0, 2, "cuda") == pytest.approx(0.25)
    assert mfu(50e12, 0.0, 100.0, 2, "cuda") == 0.0
    assert mfu(50e12, 1.0, 100.0, 2, "cpu") is None  # --peak_tflops is a GPU's peak


@pytest.mark.parametrize("preset", sorted(family_presets()))
def test_flops_model_for_every_family(preset):
    """Dense head: 6 N + 12 L H T with N = parameters less the learned position table (none for the
    rotary / relative-position families); selection: the mean layer times k, and the head on the
    masked fraction (ModernBERT's by hand: final norm, dense, norm, decoder with bias)."""
    from sift_ds.pretrain.metrics import FlopsModel

    T, k, f = 32, 1, 0.15
    model = build_model(model_config(preset, VOCAB))
    cfg = model.config
    L, H = cfg.num_hidden_layers, cfg.hidden_size
    table = {"tiny_modernbert": 0, "tiny_deberta_v2": 0, "tiny_electra": cfg.max_position_embeddings * 32}.get(
        preset, cfg.max_position_embeddings * H)
    n = sum(p.numel() for p in model.parameters()) - table  # parameters() yields a tied weight once
    flops = FlopsModel.for_masked_lm(model, T, k, f)
    assert flops.train_per_token == pytest.approx(6 * n + 12 * L * H * T)
    if preset == "tiny_modernbert":
        layers = sum(p.numel() for p in model.model.layers.parameters())
        head = H + H * H + H + VOCAB * H + VOCAB
        assert flops.select_per_token == pytest.approx(2 * k * layers / L + 4 * k * H * T + f * 2 * head)


def test_layer_norm_report_names_what_the_model_uses():
    """The job's log names the norm it trains with: an RMSNorm model (Llama) keeps its own, a BERT's
    nn.LayerNorm stays torch's when apex does not import (as here) and is left unchanged."""
    from sift_ds.pretrain.fused import apex_module, fuse_layer_norms
    from sift_ds.pretrain.models import causal_presets

    llama = build_model(model_config("tiny_llama", VOCAB), "clm")
    assert fuse_layer_norms(llama) == (0, "the model's own (LlamaRMSNorm)")
    assert "tiny_llama" in causal_presets()
    if apex_module("normalization", "FusedLayerNorm") is None:
        bert = build_bert("tiny", VOCAB)
        assert fuse_layer_norms(bert) == (0, "torch.nn.LayerNorm (apex.normalization not available)")
        assert any(type(m) is torch.nn.LayerNorm for m in bert.modules())
