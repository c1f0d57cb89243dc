"""Criteria as registered components: one registered from a module outside the package
(``criterion_plugin``) trains under the DeepSpeed engine and ``SiftTrainer``, its kept rows the top-k
of its scores computed independently (a float64 HF forward of the model as it was at each
selection); its sub-config and state; the criterion/model-kind contract; the registry's refusals."""
import copy
from dataclasses import dataclass

import pytest
import torch

import sift_ds
from sift_ds import criteria, registry
from sift_ds.config import SiftConfig
from sift_ds.criteria import Criterion, register_criterion
from criterion_plugin import NAME, PowerLossSum
from test_criteria_frequency import f64_exit_token_losses
from tiny import ds_config, mlm_batch, spread_weights, tiny_bert

POWER, EXIT = 1.5, 2


# Importing the plugin registered it, at collection, in every pytest process (each worker of
# ``pytest -n``): taken back here, so that the other modules' tests see the built-in criteria only.
criteria.unregister_criterion(NAME)


@pytest.fixture(autouse=True, scope="module")
def plugin_registered():
    """The plugin is registered for this module's tests only: other tests see the built-in criteria,
    as a user who never imports it does."""
    register_criterion(PowerLossSum)
    yield
    criteria.unregister_criterion(NAME)


def f64_power_sums(model, batch, exit_layer=EXIT, power=POWER):
    """float64 [B]: sum over each row's labelled tokens of CE^power (-inf for a row with none)."""
    losses, _, rows = f64_exit_token_losses(model, batch, exit_layer)
    out = torch.full((batch["labels"].shape[0],), float("-inf"), dtype=torch.float64)
    for r in rows.unique():
        out[r] = losses[rows == r].pow(power).sum()
    return out


def topk_rows(scores, keep):
    """Ascending indices of the ``keep`` highest scores, ties to the lower index."""
    order = sorted(range(scores.numel()), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:keep])


def test_the_plugin_trains_under_the_deepspeed_engine(single_rank_dist):
    model = spread_weights(tiny_bert(layers=3, dropout=0.0), seed=3)
    cfg = ds_config(micro=4, scope="local", exit_layer=EXIT, criterion=NAME, loss_power=POWER)  # the flat spelling
    engine = sift_ds.initialize(model=model, config=cfg)[0]
    assert engine.sift_config.options == PowerLossSum.Options(loss_power=POWER)
    for seed in range(3):
        batch = mlm_batch(engine.gross_batch_size, seed=seed, p_mask=0.4)
        want = f64_power_sums(copy.deepcopy(engine.module), batch)
        engine.train_step(batch)
        sel = engine.frontend.last
        finite = torch.isfinite(want)
        assert torch.equal(torch.isfinite(sel.scores), finite) and sel.by_score
        torch.testing.assert_close(sel.scores[finite].double(), want[finite], atol=1e-4, rtol=1e-4)
        assert sel.indices.tolist() == topk_rows(want, engine.micro_batch_size)
    assert criteria.state_dict(engine.adapter) == {"selections": 3}


def test_the_plugin_trains_under_sifttrainer(tmp_path):
    pytest.importorskip("accelerate")
    from transformers import TrainingArguments, default_data_collator
    from sift_ds.hf import SiftTrainer

    class Checked(SiftTrainer):
        references = []

        def select(self, gross, micro_step):
            self.references.append(f64_power_sums(copy.deepcopy(self.model), gross))
            return super().select(gross, micro_step)

    rows = mlm_batch(24, seed=8, p_mask=0.4)
    data = [{k: v[i] for k, v in rows.items()} for i in range(24)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3, use_cpu=True,
                             report_to=[], save_strategy="no", disable_tqdm=True)
    trainer = Checked(model=spread_weights(tiny_bert(layers=3, dropout=0.0), seed=4), args=args, train_dataset=data,
                      data_collator=default_data_collator,
                      sift={"criterion": NAME, NAME: {"loss_power": POWER}, "exit_layer": EXIT, "kernel": "torch",
                            "selection_start_step": 0, "start_after_lr_peak": True})  # Trainer's schedule: no
    # warm-up here; the new spelling: the criterion's keys in its own section
    trainer.train()
    assert len(trainer.references) == 3
    sel, want = trainer.last_selections[-1], trainer.references[-1]
    assert sel.by_score and sel.indices.tolist() == topk_rows(want, 4)
    finite = torch.isfinite(want)
    torch.testing.assert_close(sel.scores[finite].cpu().double(), want[finite], atol=1e-4, rtol=1e-4)
    assert criteria.state_dict(trainer.sift_adapter) == {"selections": 3}


def test_the_plugins_sub_config_and_flat_spelling():
    nested = SiftConfig.from_dict({"criterion": NAME, NAME: {"loss_power": 2.0}})
    assert nested == SiftConfig.from_dict({"criterion": NAME, "loss_power": 2.0})
    assert nested.to_dict()[NAME] == {"loss_power": 2.0}
    with pytest.raises(ValueError, match=rf"^sift.{NAME}.loss_power must be > 0, got -1.0$"):
        SiftConfig.from_dict({"criterion": NAME, "loss_power": -1.0})
    with pytest.raises(ValueError, match=rf"^sift.{NAME}.loss_power=3.0 is only read by sift.criterion='{NAME}', "
                                         r"not 'loss'$"):
        SiftConfig.from_dict({"criterion": "loss", NAME: {"loss_power": 3.0}})


def test_the_registry_refuses_a_second_name_or_a_clashing_key():
    @dataclass(frozen=True)
    class Clashing:
        importance_mix: float = 0.5

    with pytest.raises(ValueError, match="criterion 'loss' is already registered"):
        register_criterion(type("Again", (Criterion,), {"name": "loss", "score": lambda self, exit, inputs: exit}))
    with pytest.raises(ValueError, match="declares key 'importance_mix', which criterion 'importance' has"):
        register_criterion(type("Clash", (Criterion,), {"name": "clash", "Options": Clashing}))
    assert "clash" not in criteria.criterion_names()


class _Shifted:
    """An adapter of a causal family without align_labels (as Megatron's GPT adapter)."""
    num_layers = 2


def test_importance_serves_masked_lms_only_by_the_adapters_family():
    cfg = SiftConfig(criterion="importance")
    registry.register_family(registry.CAUSAL, model_types=("test_shifted_causal",))(_Shifted)
    try:
        with pytest.raises(ValueError, match=r"^sift.criterion='importance' serves encoder LMs only, the model is a "
                                             r"causal LM$"):
            criteria.check_model(_Shifted(), cfg)
    finally:
        registry.unregister_family(_Shifted)
    criteria.check_model(sift_ds.BertAdapter(tiny_bert(layers=2)), cfg)
    plain = type("Plain", (), {"num_layers": 2})()  # no registered family, no kind: refused
    with pytest.raises(ValueError, match="an adapter of no registered family"):
        criteria.check_model(plain, cfg)
    plain.kind = registry.ENCODER
    criteria.check_model(plain, cfg)
    criteria.check_model(_Shifted(), SiftConfig(criterion="entropy"))  # the other criteria serve both kinds
