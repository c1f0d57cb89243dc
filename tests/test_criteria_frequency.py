"""The frequency-corrected loss (``sift.criterion="freq_loss"``): per masked token, the exit loss
minus a per-id baseline (the corpus unigram -log p, or a running mean of the exit loss per id),
averaged per row. Scores against a float64 direct HF forward with a float64 baseline kept by a plain
loop; the running mean's update against a float64 loop; the counts table against collections.Counter."""
import collections
import copy
import math

import numpy as np
import pytest
import torch

import sift_ds
from sift_ds import criteria, kernels
from sift_ds.config import SiftConfig
from tiny import VOCAB, ds_config, mlm_batch, spread_weights, tiny_bert

TOL = 1e-4  # the scorer works in float32 on logits of a few units


def f64_exit_token_losses(model, batch, exit_layer):
    """(float64 per-token CE at the labelled positions after ``exit_layer`` layers, their targets,
    their rows), in row-major order, from a float64 copy of the model (a direct HF forward)."""
    ref = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        out = ref.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=batch["token_type_ids"], output_hidden_states=True)
        logits = ref.cls.predictions(out.hidden_states[exit_layer])
    labels = batch["labels"]
    rows, cols = torch.nonzero(labels != -100, as_tuple=True)
    targets = labels[rows, cols]
    losses = -torch.log_softmax(logits[rows, cols], -1).gather(1, targets[:, None]).squeeze(1)
    return losses, targets, rows


def row_means(values, rows, num_rows):
    out = []
    for r in range(num_rows):
        picked = [float(v) for v, row in zip(values, rows) if int(row) == r]
        out.append(sum(picked) / len(picked) if picked else -math.inf)
    return torch.tensor(out, dtype=torch.float64)


def assert_scores(got, want):
    finite = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got), finite)
    torch.testing.assert_close(got[finite].double(), want[finite], atol=TOL, rtol=TOL)


class Float64RunningMean:
    """The running baseline as a plain per-id loop in float64."""

    def __init__(self, decay):
        self.decay, self.mean = decay, {}

    def excess(self, losses, targets):
        return [float(l) - self.mean.get(int(t), float(l)) for l, t in zip(losses, targets)]

    def update(self, losses, targets):
        by_id = collections.defaultdict(list)
        for l, t in zip(losses, targets):
            by_id[int(t)].append(float(l))
        for t, values in by_id.items():
            batch_mean = sum(values) / len(values)
            self.mean[t] = self.decay * self.mean[t] + (1 - self.decay) * batch_mean if t in self.mean else batch_mean


def test_per_id_sums_match_a_loop():
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 13, (200,), generator=g)
    values = torch.rand(200, generator=g, dtype=torch.float64) * 5
    sums, counts = kernels.per_id_sums(targets, values.float(), 15)
    for v in range(15):
        picked = values[targets == v]
        assert counts[v].item() == picked.numel()
        assert sums[v].item() == pytest.approx(float(picked.float().double().sum()), abs=1e-9)


def test_running_mean_update_matches_a_float64_loop():
    g = torch.Generator().manual_seed(1)
    decay = 0.8
    baseline = criteria.RunningLossBaseline(20, decay, "cpu")
    loop = Float64RunningMean(decay)
    for _ in range(6):
        targets = torch.randint(0, 20, (int(torch.randint(1, 40, (1,), generator=g)),), generator=g)
        losses = torch.rand(targets.numel(), generator=g) * 6
        got = baseline.excess(targets, losses)
        torch.testing.assert_close(got.double(), torch.tensor(loop.excess(losses, targets), dtype=torch.float64),
                                   atol=1e-5, rtol=1e-6)
        baseline.update(targets, losses)
        loop.update(losses, targets)
    for t in range(20):
        assert bool(baseline.seen[t]) == (t in loop.mean)
        if t in loop.mean:
            assert baseline.mean[t].item() == pytest.approx(loop.mean[t], rel=1e-6)
    restored = criteria.RunningLossBaseline(20, decay, "cpu")
    restored.load_state_dict(baseline.state_dict())
    assert torch.equal(restored.mean, baseline.mean) and torch.equal(restored.seen, baseline.seen)


def test_unigram_counts_and_neg_log_probs(tmp_path):
    ids = [[5, 6, 6, 9], np.array([6, 0, 9]), []]
    counts = criteria.unigram_counts(ids, 12)
    want = collections.Counter(t for row in ids for t in list(row))
    assert counts.tolist() == [want.get(v, 0) for v in range(12)]
    path = str(tmp_path / "counts.npy")
    criteria.save_unigram_counts(path, counts)
    assert criteria.load_unigram_counts(path, 12).tolist() == counts.tolist()
    total = sum(want.values())
    expected = [-math.log((want.get(v, 0) + 1) / (total + 12)) for v in range(12)]
    torch.testing.assert_close(criteria.unigram_neg_log_probs(counts).double(), torch.tensor(expected,
                                                                                             dtype=torch.float64))
    with pytest.raises(ValueError, match="sift.freq_loss.frequency_table .*expected 13"):
        criteria.load_unigram_counts(path, 13)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        criteria.unigram_counts([[12]], 12)


def test_freq_loss_with_the_running_baseline_matches_a_float64_forward(single_rank_dist):
    decay = 0.7
    model = spread_weights(tiny_bert(layers=3), seed=3)
    cfg = ds_config(micro=4, criterion="freq_loss", exit_layer=2, scope="local", baseline_decay=decay)
    engine = sift_ds.initialize(model=model, config=cfg)[0]
    loop = Float64RunningMean(decay)
    for seed in range(4):  # the selections move the baseline; the tiny vocabulary makes ids repeat
        batch = mlm_batch(engine.gross_batch_size, seed=seed, p_mask=0.5)
        losses, targets, rows = f64_exit_token_losses(engine.module, batch, 2)
        want = row_means(loop.excess(losses, targets), rows, engine.gross_batch_size)
        sel = engine.select(batch)
        assert_scores(sel.scores, want)
        loop.update(losses, targets)
        assert sel.weights is None
    assert sum(1 for v in loop.mean.values()) > 20  # the baseline held many ids by the last selection


def test_freq_loss_with_the_unigram_baseline_matches_a_float64_forward(single_rank_dist, tmp_path):
    g = torch.Generator().manual_seed(5)
    counts = torch.randint(0, 50, (VOCAB,), generator=g).numpy()
    path = str(tmp_path / "counts.npy")
    criteria.save_unigram_counts(path, counts)
    model = spread_weights(tiny_bert(layers=2), seed=4)
    cfg = ds_config(micro=4, criterion="freq_loss", frequency_baseline="unigram", frequency_table=path, scope="local")
    engine = sift_ds.initialize(model=model, config=cfg)[0]
    batch = mlm_batch(engine.gross_batch_size, seed=9)
    want = unigram_excess_reference(engine.module, batch, counts, 1, engine.gross_batch_size)
    for _ in range(2):  # a fixed table: the same scores every time
        sel = engine.select(batch)
        assert_scores(sel.scores, want)
    order = sorted(range(len(want)), key=lambda i: (want[i].item(), -i), reverse=True)
    assert sel.indices.tolist() == sorted(order[:4])


def unigram_excess_reference(model, batch, counts, exit_layer, rows):
    losses, targets, token_rows = f64_exit_token_losses(model, batch, exit_layer)
    total = float(counts.sum())
    excess = [float(l) + math.log((counts[int(t)] + 1) / (total + VOCAB)) for l, t in zip(losses, targets)]
    return row_means(excess, token_rows, rows)


def test_freq_loss_reads_the_fused_kernels_token_losses(monkeypatch, tmp_path):
    """The Triton path (interpreted on the CPU) gives the float64 forward's scores too."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    counts = np.arange(VOCAB) % 7
    path = str(tmp_path / "counts.npy")
    criteria.save_unigram_counts(path, counts)
    model = spread_weights(tiny_bert(layers=2), seed=6)
    cfg = SiftConfig(criterion="freq_loss", options={"frequency_baseline": "unigram", "frequency_table": path},
                     kernel="triton")
    batch = mlm_batch(6, seed=11)
    got = criteria.criterion_scores(sift_ds.detect_adapter(model), cfg, batch)
    assert_scores(got, unigram_excess_reference(model, batch, counts, 1, 6))


def test_config_keys_are_checked():
    with pytest.raises(ValueError, match="sift.freq_loss.frequency_table must name"):
        SiftConfig.from_dict({"criterion": "freq_loss", "frequency_baseline": "unigram"})
    with pytest.raises(ValueError, match="sift.freq_loss.baseline_decay must be in"):
        SiftConfig.from_dict({"criterion": "freq_loss", "freq_loss": {"baseline_decay": 1.0}})
    with pytest.raises(ValueError, match="sift.freq_loss.frequency_baseline must be one of"):
        SiftConfig.from_dict({"criterion": "freq_loss", "frequency_baseline": "zipf"})
    assert SiftConfig().criterion == "entropy"  # the library default stays


def test_a_criterions_keys_live_in_its_section_and_the_flat_spelling_is_read_as_that():
    nested = SiftConfig.from_dict({"criterion": "freq_loss", "freq_loss": {"baseline_decay": 0.95}})
    flat = SiftConfig.from_dict({"criterion": "freq_loss", "baseline_decay": 0.95})
    assert nested == flat and nested.options.baseline_decay == 0.95
    assert nested.to_dict()["freq_loss"] == {"frequency_baseline": "running", "frequency_table": "", "baseline_decay": 0.95}
    assert "baseline_decay" not in nested.to_dict() and nested.to_dict(flat=True)["baseline_decay"] == 0.95
    assert SiftConfig.from_dict(nested.to_dict()) == nested == SiftConfig.from_dict(nested.to_dict(flat=True))
    # An older record names every criterion's keys: another criterion's defaults mean nothing.
    assert SiftConfig.from_dict({"criterion": "entropy", "importance_mix": 0.5, "score_file": ""}) == SiftConfig()
    with pytest.raises(ValueError, match=r"^sift.importance.importance_mix=0.25 is only read by "
                                         r"sift.criterion='importance', not 'entropy'$"):
        SiftConfig.from_dict({"criterion": "entropy", "importance_mix": 0.25})
    with pytest.raises(ValueError, match="^sift.baseline_decay is the old spelling of sift.freq_loss.baseline_decay"):
        SiftConfig.from_dict({"criterion": "freq_loss", "baseline_decay": 0.5, "freq_loss": {"baseline_decay": 0.5}})
    with pytest.raises(ValueError, match="'sift.freq_loss' section: unknown key 'decay'"):
        SiftConfig.from_dict({"criterion": "freq_loss", "freq_loss": {"decay": 0.5}})


def test_the_new_criteria_as_study_arms_and_job_flags(tmp_path):
    from launch_helpers import load_cli, small_config
    from sift_ds.pretrain.unigram import job_unigram_table
    from sift_ds.study.arms import parse_arms

    freq, running, imp = parse_arms("freq_loss:1@frequency_baseline=unigram, freq_loss:2@baseline_decay=0.95, "
                                    "importance:1@importance_mix=0.5")
    assert freq.label == "freq_loss-exit1_frequency_baseline-unigram"
    assert imp.overrides == ("--sift_enabled", "true", "--sift_criterion", "importance", "--sift_exit_layer", "1",
                             "--sift_importance_mix", "0.5")
    config, out, cli = small_config(tmp_path), str(tmp_path / "out"), load_cli()  # launch/pretrain_bert.py
    plans = [cli.resolve(["--ds_config", config, "--output_dir", out, *arm.overrides]) for arm in (freq, running, imp)]
    # The job's unigram baseline without a table: the counts file it writes from its training split.
    assert (plans[0].sift.criterion, plans[0].sift.options.frequency_table) == ("freq_loss", job_unigram_table(out))
    assert (plans[1].sift.exit_layer, plans[1].sift.options.baseline_decay,
            plans[1].sift.options.frequency_table) == (2, 0.95, "")
    assert (plans[2].sift.criterion, plans[2].sift.options.importance_mix) == ("importance", 0.5)


def test_a_resumed_sifttrainer_run_scores_with_the_checkpointed_baseline(tmp_path):
    """SiftTrainer (one process): the run resumed from its step-2 checkpoint scores every later
    selection exactly as the uninterrupted run did (the baseline moved at step 1 is in the checkpoint)."""
    pytest.importorskip("accelerate")
    from transformers import TrainingArguments, default_data_collator
    from sift_ds.hf import SiftTrainer

    class Recording(SiftTrainer):
        def select(self, batch, micro_step):
            sel = super().select(batch, micro_step)
            self.scores.append((self.state.global_step, sel.scores.tolist()))
            return sel

    rows = mlm_batch(48, seed=12, p_mask=0.5)
    data = [{k: v[i] for k, v in rows.items()} for i in range(48)]

    def run(resume=None):
        args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=4, use_cpu=True,
                                 report_to=[], save_strategy="steps", save_steps=2, disable_tqdm=True, seed=7)
        trainer = Recording(model=tiny_bert(layers=2, dropout=0.0, seed=3), args=args, train_dataset=data,
                            data_collator=default_data_collator,
                            sift={"criterion": "freq_loss", "exit_layer": 1, "kernel": "torch", "selection_start_step": 1,
                                  "start_after_lr_peak": True})  # Trainer's schedule here has no warm-up
        trainer.scores = []
        trainer.train(resume_from_checkpoint=resume)
        return trainer.scores

    full = run()
    assert (tmp_path / "checkpoint-2" / "sift_criterion.pt").is_file()
    resumed = run(str(tmp_path / "checkpoint-2"))
    assert [s for s in full if s[0] >= 2] == resumed
    assert any(abs(v) > 0 for v in resumed[0][1] if math.isfinite(v))  # the step-1 baseline moved these scores
