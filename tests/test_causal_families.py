"""Causal LMs (Llama, Qwen2, Qwen3, Mistral, GPT-2, GPT-NeoX): next-token early-exit scores at every
exit layer, for loss and entropy, with right padding and HF's unshifted labels, against float64
references from HF's own forward (final norm + LM head applied in the test to ``hidden_states[k]``);
at the last layer the model's own logits and loss; the seeded position subset against the same
reference restricted to that subset."""
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import sift_ds
from sift_ds import registry
from sift_ds.adapters import detect_adapter
from sift_ds.config import SiftConfig
from sift_ds.criteria.early_exit import early_exit_scores, labelled_positions, position_subset
from sift_ds.selection import position_seed
from tiny import ds_config, f64_row_scores, spread_weights

VOCAB, LAYERS, PAD, TOL = 67, 3, 0, 2e-5
LLAMA = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)
CASES = {
    "llama": dict(LLAMA),
    "qwen2": dict(LLAMA, use_sliding_window=True, sliding_window=4, max_window_layers=1, tie_word_embeddings=True),
    "qwen3": dict(LLAMA, head_dim=8),
    "mistral": dict(LLAMA, sliding_window=5),
    "gpt2": dict(n_embd=32, n_layer=LAYERS, n_head=2, n_positions=64),
    "gpt_neox": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=2,
                     max_position_embeddings=64, use_parallel_residual=True),
}


def final_norm_and_head(model, hidden):
    kind = model.config.model_type
    if kind == "gpt2":
        return model.lm_head(model.transformer.ln_f(hidden))
    if kind == "gpt_neox":
        return model.lm_head(model.gpt_neox.final_layer_norm(hidden))
    return model.lm_head(model.model.norm(hidden))


def build(kind):
    config = AutoConfig.for_model(kind, vocab_size=VOCAB, pad_token_id=PAD, **CASES[kind])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).double().eval()
    spread_weights(model, 3)
    return model


def right_padded_batch(rows=5, seq=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (rows, seq), generator=g)
    lengths = torch.tensor([seq, seq - 4, 11, 1, seq - 9])[:rows]  # row 3: one token, nothing to predict
    attention = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    ids = torch.where(attention == 1, ids, torch.full_like(ids, PAD))
    labels = torch.where(attention == 1, ids, torch.full_like(ids, -100))  # HF: unshifted, padding ignored
    labels[0, 5:9] = -100  # some ignored targets inside a row
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def reference(logits, labels, criterion, scored=None):
    """float64 per-row mean next-token CE / entropy: position i against labels[:, i + 1]."""
    targets = labels[:, 1:]
    mask = targets != -100 if scored is None else scored[:, :-1]
    return f64_row_scores(logits[:, :-1], targets, mask, criterion)


@pytest.fixture(scope="module", params=sorted(CASES))
def family(request):
    model = build(request.param)
    batch = right_padded_batch()
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                    output_hidden_states=True)
        logits = {k: final_norm_and_head(model, out.hidden_states[k]) for k in range(1, LAYERS)}
        logits[LAYERS] = out.logits
    return model, batch, logits, out.loss


@pytest.mark.parametrize("criterion", ["loss", "entropy"])
def test_next_token_scores_match_hf_forward_at_every_exit(family, criterion):
    model, batch, logits, _ = family
    adapter = detect_adapter(model)
    assert isinstance(adapter, registry.by_model_type(model.config.model_type).adapter)
    expected = {k: reference(z, batch["labels"], criterion) for k, z in logits.items()}
    finite = torch.isfinite(expected[1])
    assert finite.tolist() == [True, True, True, False, True]
    for k in range(1, LAYERS + 1):
        got = early_exit_scores(adapter, batch, k, criterion, backend="torch")
        assert torch.equal(torch.isfinite(got), finite)
        torch.testing.assert_close(got[finite].double(), expected[k][finite], atol=TOL, rtol=TOL, msg=f"exit {k}")
        for other in (k - 1, k + 1):
            if other in expected:
                assert (got[finite].double() - expected[other][finite]).abs().max() > 100 * TOL


def test_last_exit_loss_is_the_models_own_loss(family):
    model, batch, _, loss = family
    scores = early_exit_scores(detect_adapter(model), batch, LAYERS, "loss", backend="torch")
    count = (batch["labels"][:, 1:] != -100).sum(1)
    token_mean = (scores[count > 0].double() * count[count > 0]).sum() / count.sum()
    torch.testing.assert_close(token_mean, loss.double(), atol=TOL, rtol=TOL)


@pytest.mark.parametrize("criterion", ["loss", "entropy"])
def test_position_subset_matches_the_reference_on_the_same_subset(family, criterion):
    model, batch, logits, _ = family
    adapter, m, seed = detect_adapter(model), 4, 11
    shifted = torch.cat([batch["labels"][:, 1:], torch.full_like(batch["labels"][:, :1], -100)], 1)
    subset = position_subset(shifted, m, seed)
    scored = subset != -100
    # the subset: labelled positions only, min(m, available) per row, reproducible, seed-dependent
    assert (scored <= (shifted != -100)).all()
    assert scored.sum(1).tolist() == (shifted != -100).sum(1).clamp(max=m).tolist()
    assert torch.equal(position_subset(shifted, m, seed), subset)
    assert not torch.equal(position_subset(shifted, m, seed + 1), subset)
    positions = labelled_positions(adapter, batch, "labels", m, seed)
    assert torch.equal(positions[0], torch.nonzero(scored.reshape(-1)).squeeze(1))
    for k in (1, LAYERS):
        got = early_exit_scores(adapter, batch, k, criterion, backend="torch", max_positions=m, seed=seed)
        expected = reference(logits[k], batch["labels"], criterion, scored=scored)
        finite = torch.isfinite(expected)
        assert torch.equal(torch.isfinite(got), finite)
        torch.testing.assert_close(got[finite].double(), expected[finite], atol=TOL, rtol=TOL)


def test_max_positions_is_validated():
    assert SiftConfig.from_dict({"max_positions": 64}).max_positions == 64
    with pytest.raises(ValueError, match="sift.max_positions must be >= 0"):
        SiftConfig.from_dict({"max_positions": -1})
    with pytest.raises(ValueError, match="max_positions"):
        SiftConfig.from_dict({"max_positions": 2.5})


def test_engine_selects_top_rows_of_the_subset_scores(single_rank_dist):
    """Through sift_ds.initialize: host-side positions of the shifted, subset labels; the kept rows
    are the top-k of the float64 reference on the same subset."""
    model = build("llama").float()
    engine = sift_ds.initialize(model=model, config=ds_config(micro=2, criterion="loss", exit_layer=1, keep_ratio=0.5, scope="local",
                                                              max_positions=5, kernel="torch"))[0]
    batch = {k: v[[0, 1, 2, 4]] for k, v in right_padded_batch().items()}
    seed = position_seed(engine.sift_config, engine.global_steps, 0, 0)
    sel = engine.select(batch)
    shifted = torch.cat([batch["labels"][:, 1:], torch.full_like(batch["labels"][:, :1], -100)], 1)
    scored = position_subset(shifted, 5, seed) != -100
    with torch.no_grad():
        hidden = model.double()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                output_hidden_states=True).hidden_states[1]
        expected = reference(final_norm_and_head(model, hidden), batch["labels"], "loss", scored=scored)
    torch.testing.assert_close(sel.scores.double(), expected, atol=1e-4, rtol=1e-4)
    assert sorted(sel.indices.tolist()) == sorted(expected.topk(2).indices.tolist())
