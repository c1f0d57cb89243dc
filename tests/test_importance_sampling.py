"""Importance sampling (``sift.criterion="importance"``): the gradient-norm bound and row scores against
float64 references from a direct HF forward; the sampling distribution; unbiasedness of the weighted
loss, exactly (by enumerating every draw) and by the real draws over many steps; the weights where
each front-end forms its loss (SiftEngine, SiftTrainer.compute_loss, Megatron's loss_func)."""
import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import sift_ds
from sift_ds import importance, kernels
from sift_ds.config import SiftConfig
from sift_ds.weighted_loss import ROW_WEIGHTS_KEY, weighted_mlm_loss
from tiny import ds_config, mlm_batch, spread_weights, tiny_bert

TOL = 1e-4


def f64_gradient_norms(logits, targets):
    """float64 ||softmax(z) - onehot(y)||_2 per row, directly."""
    p = torch.softmax(logits.double(), -1)
    return (p - F.one_hot(targets, logits.shape[-1]).double()).norm(dim=-1)


def f64_forward(model, batch, exit_layer=None):
    """float64 logits [B, S, V] of a float64 copy of the model: at ``exit_layer`` through the MLM head,
    or the full model's (None)."""
    ref = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        out = ref.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=batch["token_type_ids"], output_hidden_states=True)
        hidden = out.hidden_states[exit_layer] if exit_layer is not None else out.last_hidden_state
        return ref.cls.predictions(hidden)


def f64_row_gradient_norms(logits, labels):
    masked = labels != -100
    norms = torch.zeros(labels.shape, dtype=torch.float64)
    norms[masked] = f64_gradient_norms(logits[masked], labels[masked])
    count = masked.sum(1)
    return torch.where(count > 0, norms.sum(1) / count.clamp_min(1), torch.full((labels.shape[0],), -math.inf,
                                                                                  dtype=torch.float64))


def f64_token_losses(logits, labels):
    """(float64 per-row summed masked-token CE [B], masked tokens per row [B])."""
    masked = labels != -100
    ce = F.cross_entropy(logits.double().flatten(0, 1), labels.reshape(-1), ignore_index=-100,
                         reduction="none").view(labels.shape)
    return ce.sum(1), masked.sum(1)


def uniform_loss_and_probabilities(model, batch, mix):
    """(float64 full-model logits, masked tokens per row, the uniform token-mean loss of the batch,
    float64 sampling probabilities from the exit-1 gradient-norm bounds), all from direct forwards."""
    logits = f64_forward(model, batch)
    sums, counts = f64_token_losses(logits, batch["labels"])
    g = f64_row_gradient_norms(f64_forward(model, batch, 1), batch["labels"])
    return logits, counts, float(sums.sum() / counts.sum()), importance.sampling_probabilities(g, mix)


def test_gradient_norm_bound_matches_float64_across_chunks():
    g = torch.Generator().manual_seed(0)
    rows, weight, bias = (torch.randn(60, 16, generator=g) * 2, torch.randn(5000, 16, generator=g),
                          torch.randn(5000, generator=g))
    logits = rows.double() @ weight.double().T + bias.double()
    targets = torch.randint(0, 5000, (60,), generator=g)  # 60 rows: several chunks of the CPU reference
    targets[::2] = logits[::2].argmax(-1)  # half the rows predicted right
    got = kernels.token_gradient_norms(rows, weight, bias, targets)
    want = f64_gradient_norms(logits, targets)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    assert float(want.min()) < 1.0 < float(want.max())  # right and wrong predictions alike


@pytest.fixture(scope="module")
def engine(single_rank_dist):
    model = spread_weights(tiny_bert(layers=3, dropout=0.0), seed=2)
    cfg = ds_config(micro=4, criterion="importance", exit_layer=2, scope="local", importance_mix=0.25)
    return sift_ds.initialize(model=model, config=cfg)[0]


def test_scores_and_probabilities_match_a_float64_forward(engine):
    batch = mlm_batch(engine.gross_batch_size, seed=1)
    sel = engine.select(batch)
    want = f64_row_gradient_norms(f64_forward(engine.module, batch, 2), batch["labels"])
    finite = torch.isfinite(want)
    assert torch.equal(torch.isfinite(sel.scores), finite) and not finite.all()  # mlm_batch has an empty row
    torch.testing.assert_close(sel.scores[finite].double(), want[finite], atol=TOL, rtol=TOL)
    g = torch.where(finite, want, torch.zeros_like(want))
    p_want = 0.75 * g / g.sum() + 0.25 / g.numel()
    torch.testing.assert_close(importance.sampling_probabilities(sel.scores, 0.25), p_want, atol=1e-6, rtol=1e-5)
    assert sel.indices.numel() == engine.micro_batch_size and sel.weights.shape == (engine.micro_batch_size,)


def test_the_weighted_loss_is_unbiased_by_enumeration(engine):
    """E over every ordered triple of i.i.d. draws of the weighted loss = the uniform token-mean loss
    of the gross batch, to float64 rounding (1e-12: the identity is exact)."""
    batch = mlm_batch(8, seed=2)
    logits, counts, uniform, p = uniform_loss_and_probabilities(engine.module, batch, 0.3)
    expectation = 0.0
    for draw in itertools.product(range(8), repeat=3):
        rows = torch.tensor(sorted(draw))
        weights = importance.loss_weights(p, counts, rows).double()
        loss = weighted_mlm_loss(logits[rows], batch["labels"][rows], weights)
        expectation += float(p[rows].prod()) * float(loss)
    assert expectation == pytest.approx(uniform, rel=1e-6)  # float32 weights: 1e-7 relative each


def test_the_real_draws_are_unbiased_over_many_steps(engine):
    """The sampler's own draws (one per step, K = 4 of N = 16) over 3000 steps: the mean weighted loss
    is the uniform loss within 4 standard errors (the errors' spread measured on the same draws),
    and each row's draw frequency is p within 4 binomial standard errors."""
    batch = mlm_batch(16, seed=3)
    logits, counts, uniform, p = uniform_loss_and_probabilities(engine.module, batch, 0.2)
    steps, k = 3000, 4
    estimates, hits = [], torch.zeros(16, dtype=torch.float64)
    for step in range(steps):
        rows = importance.draw_rows(p, k, 1234, step, 0)
        hits += torch.bincount(rows, minlength=16).double()
        weights = importance.loss_weights(p, counts, rows).double()
        estimates.append(float(weighted_mlm_loss(logits[rows], batch["labels"][rows], weights)))
    est = torch.tensor(estimates, dtype=torch.float64)
    assert abs(float(est.mean()) - uniform) < 4 * float(est.std()) / math.sqrt(steps)
    freq = hits / (steps * k)
    assert ((freq - p).abs() <= 4 * (p * (1 - p) / (steps * k)).sqrt() + 1e-12).all()


def test_draws_are_a_pure_function_of_the_seed_key():
    p = importance.sampling_probabilities(torch.tensor([0.5, 1.0, 2.0, -math.inf, 0.1]), 0.5)
    assert p[3] == pytest.approx(0.1) and float(p.sum()) == pytest.approx(1.0)
    a = importance.draw_rows(p, 6, 7, 3, 1, rank=2)
    assert torch.equal(a, importance.draw_rows(p.clone(), 6, 7, 3, 1, rank=2))
    others = [importance.draw_rows(p, 6, *key) for key in ((8, 3, 1, 2), (7, 4, 1, 2), (7, 3, 0, 2), (7, 3, 1, 1))]
    assert any(not torch.equal(a, o) for o in others)
    assert torch.equal(a, torch.sort(a).values)


def test_siftengine_trains_on_the_weighted_loss(engine):
    """train_step's loss is sum_t omega_row(t) CE_t / T over the kept rows' masked tokens, from a direct
    float64 forward of the rows the selection drew, with the weights from the float64 probabilities."""
    batch = mlm_batch(engine.gross_batch_size, seed=4)
    before = copy.deepcopy(engine.module)
    sel = engine.select(batch)
    loss = engine.train_step(batch)  # the same step and micro-step: the same draws
    rows = sel.indices
    p = importance.sampling_probabilities(f64_row_gradient_norms(f64_forward(before, batch, 2), batch["labels"]),
                                          0.25)
    counts = (batch["labels"] != -100).sum(1)
    sums, _ = f64_token_losses(f64_forward(before, {k: v[rows] for k, v in batch.items()}), batch["labels"][rows])
    want = float((1.0 / (counts.numel() * p[rows]) * sums).sum() / (rows.numel() * counts.double().mean()))
    assert float(loss) == pytest.approx(want, rel=1e-4)


def test_sifttrainer_compute_loss_applies_the_weights(tmp_path):
    pytest.importorskip("accelerate")
    from transformers import TrainingArguments
    from sift_ds.hf import SiftTrainer

    model = spread_weights(tiny_bert(layers=2, dropout=0.0), seed=5)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, use_cpu=True, report_to=[])
    trainer = SiftTrainer(model=model, args=args, sift={"criterion": "importance", "exit_layer": 1})
    batch = mlm_batch(4, seed=6, empty_row=False)
    weights = torch.tensor([0.5, 2.0, 1.0, 3.0])
    model.train()
    loss = trainer.compute_loss(model, {**batch, ROW_WEIGHTS_KEY: weights})
    sums, counts = f64_token_losses(f64_forward(model, batch), batch["labels"])
    assert float(loss.detach()) == pytest.approx(float((weights.double() * sums).sum() / counts.sum()), rel=1e-4)
    unweighted = trainer.compute_loss(model, dict(batch))
    assert float(unweighted) == pytest.approx(float(sums.sum() / counts.sum()), rel=1e-4)


def test_sifttrainer_trains_each_step_with_its_selections_weights(tmp_path):
    pytest.importorskip("accelerate")
    from transformers import TrainingArguments, default_data_collator
    from sift_ds.hf import SiftTrainer

    class Recording(SiftTrainer):
        received = []

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            self.received.append(inputs.get(ROW_WEIGHTS_KEY))
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    rows = mlm_batch(32, seed=8)
    data = [{k: v[i] for k, v in rows.items()} for i in range(32)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3, use_cpu=True,
                             report_to=[], logging_steps=1, save_strategy="no", disable_tqdm=True)
    trainer = Recording(model=tiny_bert(layers=2, dropout=0.0), args=args, train_dataset=data,
                        data_collator=default_data_collator,
                        sift={"criterion": "importance", "exit_layer": 1, "kernel": "torch", "selection_start_step": 1,
                              "start_after_lr_peak": True})  # Trainer's schedule here has no warm-up
    trainer.train()
    assert trainer.received[0] is None and all(w is not None for w in trainer.received[1:])  # after the warm-up
    assert torch.equal(trainer.received[-1].cpu(), trainer.last_selections[-1].weights.cpu())
    assert all(math.isfinite(r["loss"]) for r in trainer.state.log_history if "loss" in r)


def test_megatron_loss_func_scales_each_rows_token_losses():
    pytest.importorskip("megatron.core", reason="needs the megatron-core test extra")
    from sift_ds.megatron.forward_step import wrap_loss_func

    per_token = torch.tensor([[1.0, 2.0, 0.0], [4.0, 0.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])

    def loss_func(output):  # a pretrain_bert.py-style loss: masked token mean
        loss = (output * mask).sum() / mask.sum()
        return loss, {"lm loss": loss.view(1)}

    wrapped = wrap_loss_func(loss_func, {}, row_weights=torch.tensor([2.0, 0.5]))
    assert float(wrapped(per_token)[0]) == pytest.approx((2 * (1 + 2) + 0.5 * (4 + 6)) / 4)
    assert float(wrap_loss_func(loss_func, {})(per_token)[0]) == pytest.approx((1 + 2 + 4 + 6) / 4)


def test_config_refuses_importance_with_other_samplers():
    with pytest.raises(ValueError, match="sift.sampling must be 'topk'"):
        SiftConfig.from_dict({"criterion": "importance", "sampling": "rank"})
    with pytest.raises(ValueError, match="sift.importance.importance_mix must be in"):
        SiftConfig.from_dict({"criterion": "importance", "importance_mix": 0.0})
