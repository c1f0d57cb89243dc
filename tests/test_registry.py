"""The family registry: the built-in families as declared where their adapters live, and a family
registered from a module outside the package (tests/camembert_family.py) used end to end: its preset
builds the model, ``detect_adapter`` finds its adapter, the pretraining job's model checks know it, and
a selection keeps the rows an independent float64 reference ranks highest."""
import importlib
import sys

import pytest
import torch
from transformers import AutoModelForMaskedLM

from sift_ds import SiftConfig, detect_adapter, registry
from sift_ds.families import BertAdapter, LlamaStyleAdapter, RobertaAdapter
from sift_ds.pretrain.models import family_presets, max_sequence_length, model_config
from sift_ds.selection import select
from tiny import VOCAB, f64_row_scores, mlm_batch, spread_weights


@pytest.fixture
def camembert():
    module = importlib.import_module("camembert_family")
    yield module
    registry.unregister_family(module.CamembertAdapter)
    sys.modules.pop("camembert_family", None)


def test_built_in_families_declare_what_they_serve():
    assert registry.by_model_type("xlm-roberta").adapter is RobertaAdapter
    assert registry.by_model_type("qwen3").kind == registry.CAUSAL and registry.is_causal("qwen3")
    assert registry.by_model_type("bert").kind == registry.ENCODER and not registry.is_causal("bert")
    assert registry.by_model_type("roberta").positions_after_padding
    assert not registry.by_model_type("bert").positions_after_padding
    assert registry.preset("tiny_llama")[0] == "llama" and registry.preset("tiny_roberta")[0] == "roberta"
    assert registry.resolve(torch.nn.Linear(1, 1)) is None
    assert BertAdapter.registration.model_types == ("bert",) and "llama" in LlamaStyleAdapter.registration.model_types


def test_a_claimed_model_type_is_refused():
    with pytest.raises(ValueError, match="registers model_type 'bert', which BertAdapter already serves"):
        registry.register_family(registry.ENCODER, model_types=("bert",))(type("Other", (), {}))
    with pytest.raises(ValueError, match="kind"):
        registry.register_family("seq2seq")


def test_a_family_from_outside_the_package_runs_a_selection(camembert):
    config = model_config("tiny_camembert", VOCAB)
    assert config.model_type == "camembert" and "tiny_camembert" in family_presets()
    assert max_sequence_length(config) == 66 - (config.pad_token_id + 1)  # positions after the padding id
    assert not registry.is_causal("camembert") and "camembert" in registry.served()
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(config)
    spread_weights(model, seed=1)
    adapter = detect_adapter(model)
    assert isinstance(adapter, camembert.CamembertAdapter) and adapter.num_layers == 2

    batch = mlm_batch(8, seed=4, empty_row=False)
    model.eval()
    with torch.no_grad():  # the reference: the full model's own logits, float64 per-row loss
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    reference = f64_row_scores(logits, batch["labels"], batch["labels"] != -100, "loss")
    sift = SiftConfig(criterion="loss", exit_layer=2, kernel="torch", scope="local", selection_start_step=0)
    sel = select(adapter, sift, batch, step=0, micro_step=0, keep=4)
    assert sel.by_score and sel.indices.tolist() == sorted(torch.topk(reference, 4).indices.tolist())
    assert torch.allclose(sel.scores.double(), reference, atol=1e-5)


def test_an_unregistered_family_is_gone(camembert):
    registry.unregister_family(camembert.CamembertAdapter)
    assert registry.by_model_type("camembert") is None and registry.preset("tiny_camembert") is None
