"""Every built-in MLM family: early-exit scores at every exit layer, for loss and entropy, with
padding, against float64 references from HF's own forward (``output_hidden_states``) with the
family's head modules applied in the test; at the last layer also the model's own logits."""
import pytest
import torch
from transformers import AutoConfig, AutoModelForMaskedLM, ElectraForPreTraining

import sift_ds
from sift_ds import registry
from sift_ds.adapters import detect_adapter
from sift_ds.pretrain.models import family_presets, model_config
from sift_ds.criteria import early_exit_scores
from tiny import ds_config, f64_row_scores, spread_weights

FAMILY_PRESETS = family_presets()

VOCAB, LAYERS, PAD = 61, 3, 0
TOL = 2e-5


def head_logits(model, hidden):
    """The family's MLM head on ``hidden`` through HF's own head modules (an independent path)."""
    kind = model.config.model_type
    if kind == "bert":
        return model.cls.predictions(hidden)
    if kind in ("roberta", "xlm-roberta"):
        return model.lm_head(hidden)
    if kind == "electra":
        return model.generator_lm_head(model.generator_predictions(hidden))
    if kind == "distilbert":
        return model.vocab_projector(model.vocab_layer_norm(model.activation(model.vocab_transform(hidden))))
    if kind == "modernbert":
        return model.decoder(model.head(model.model.final_norm(hidden)))
    if kind == "deberta-v2":
        if model.config.legacy:
            return model.cls(hidden)
        return model.lm_predictions(hidden, model.deberta.embeddings.word_embeddings)
    raise AssertionError(kind)


CASES = {  # name: (model_type, config fields)
    "bert": ("bert", dict(hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=64,
                          max_position_embeddings=64)),
    **{name: (kind, fields) for name, (kind, fields) in FAMILY_PRESETS.items()},
    "deberta_v2_lm_predictions": ("deberta-v2", dict(FAMILY_PRESETS["tiny_deberta_v2"][1], legacy=False,
                                                     conv_kernel_size=0)),
}


def build(name):
    kind, fields = CASES[name]
    fields = dict(fields)
    fields["n_layers" if kind == "distilbert" else "num_hidden_layers"] = LAYERS
    config = AutoConfig.for_model(kind, vocab_size=VOCAB, pad_token_id=PAD, **fields)
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(config).double().eval()
    spread_weights(model, 7)
    return model


def padded_batch(model, rows=5, seq=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (rows, seq), generator=g)
    lengths = torch.tensor([seq, seq - 3, seq // 2, seq - 7, 9])[:rows]
    attention = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    ids = torch.where(attention == 1, ids, torch.full_like(ids, PAD))
    labels = torch.where((torch.rand(rows, seq, generator=g) < 0.3) & (attention == 1), ids, torch.full_like(ids, -100))
    labels[1] = -100  # a row with nothing to score
    batch = {"input_ids": torch.where(labels != -100, torch.full_like(ids, 4), ids), "attention_mask": attention,
             "labels": labels}
    if "token_type_ids" in __import__("inspect").signature(model.forward).parameters:
        batch["token_type_ids"] = torch.zeros_like(ids)
    return batch


def reference(logits, labels, criterion):
    """float64 per-row mean CE / entropy over the labelled positions (-inf for none)."""
    return f64_row_scores(logits, labels, labels != -100, criterion)


@pytest.fixture(scope="module", params=sorted(CASES))
def family(request):
    model = build(request.param)
    batch = padded_batch(model)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
        refs = {k: head_logits(model, out.hidden_states[k]) for k in range(1, LAYERS)}
        refs[LAYERS] = out.logits  # the model's own forward at the last layer
    return model, batch, refs


@pytest.mark.parametrize("criterion", ["loss", "entropy"])
def test_scores_match_hf_forward_at_every_exit(family, criterion):
    model, batch, refs = family
    adapter = detect_adapter(model)
    assert isinstance(adapter, registry.by_model_type(model.config.model_type).adapter) and adapter.num_layers == LAYERS
    expected = {k: reference(logits, batch["labels"], criterion) for k, logits in refs.items()}
    finite = torch.isfinite(expected[1])
    assert not finite[1] and finite.sum() == len(finite) - 1
    for k in range(1, LAYERS + 1):
        got = early_exit_scores(adapter, batch, k, criterion, backend="torch")
        assert got.dtype == torch.float32 and torch.equal(torch.isfinite(got), finite)
        torch.testing.assert_close(got[finite].double(), expected[k][finite], atol=TOL, rtol=TOL, msg=f"exit {k}")
        for other in (k - 1, k + 1):  # the references tell the layers apart
            if other in expected:
                assert (got[finite].double() - expected[other][finite]).abs().max() > 100 * TOL


def test_last_exit_loss_is_the_models_own_loss(family):
    model, batch, _ = family
    with torch.no_grad():
        loss = model(**batch).loss
    scores = early_exit_scores(detect_adapter(model), batch, LAYERS, "loss", backend="torch")
    labels = batch["labels"]
    count = (labels != -100).sum(1)
    token_mean = (scores[count > 0].double() * count[count > 0]).sum() / count.sum()
    torch.testing.assert_close(token_mean, loss.double(), atol=TOL, rtol=TOL)


def test_electra_discriminator_is_refused():
    config = AutoConfig.for_model("electra", vocab_size=VOCAB, **FAMILY_PRESETS["tiny_electra"][1])
    with pytest.raises(TypeError, match="generator_predictions"):
        detect_adapter(ElectraForPreTraining(config))


def test_presets_build_their_family():
    for name, (kind, _) in FAMILY_PRESETS.items():
        assert model_config(name, VOCAB).model_type == kind


@pytest.mark.parametrize("name", ["tiny_deberta_v2", "tiny_distilbert", "tiny_modernbert"])
def test_zero3_gathers_what_the_exit_touches(single_rank_dist, name):
    """Under ZeRO-3 the engine gathers exactly ``selection_modules`` (DeBERTa's relative embeddings and
    convolution, DistilBERT's projector bias, ModernBERT's final norm): the scores still match HF's."""
    model = build(name)
    batch = {k: v[:4] for k, v in padded_batch(model).items()}
    with torch.no_grad():
        hidden = model(**{k: v for k, v in batch.items() if k != "labels"}, output_hidden_states=True).hidden_states[2]
        expected = reference(head_logits(model, hidden), batch["labels"], "loss")
    config = ds_config(micro=2, stage=3, criterion="loss", exit_layer=2, keep_ratio=0.5, scope="local", kernel="torch")
    engine = sift_ds.initialize(model=model.float(), config=config)[0]
    got = engine.select(batch).scores
    finite = torch.isfinite(expected)
    assert torch.equal(torch.isfinite(got), finite)
    torch.testing.assert_close(got[finite].double(), expected[finite], atol=1e-4, rtol=1e-4)
