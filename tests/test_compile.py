"""``torch.compile`` with SIFT (``sift_ds.compiling``). The padded masked-positions-only head gives the
unpadded head's loss and gradients (float64) and leaves room for the binomial tail of the masked
count (scipy). A compiled in-process DeepSpeed engine with SIFT on (its training forward through
DeepSpeed's ``engine.compile``, its prefix forward through ``compile_prefix``) runs 20 steps with no
recompile and no graph break after warm-up (``torch._dynamo`` counters), gives the eager engine's
losses and parameters, and resumes from its checkpoint exactly. ``SiftTrainer`` with
``TrainingArguments(torch_compile=True)`` likewise over 12 steps. The job's ``--compile`` start-up refusals."""
import copy

import numpy as np
import pytest
import torch
import torch._dynamo
from scipy import stats
from torch._dynamo.utils import counters

import sift_ds
from launch_helpers import config_file, one_line_error, set_key
from sift_ds.compiling import compile_engine
from sift_ds.mlm_head import apply_sparse_mlm_head, padded_row_count
from tiny import ds_config, mlm_batch, tiny_bert

SHARE = 0.2  # mlm_batch's masking probability
STEPS, WARMUP = 20, 2
BACKEND = "aot_eager"  # dynamo and AOTAutograd as inductor sees them, without generating code


@pytest.mark.parametrize("positions, share", [(16 * 128, 0.15), (64 * 16, 0.2), (32 * 512, 0.15), (16, 0.5)])
def test_padded_row_count_leaves_room_for_the_binomial_tail(positions, share):
    count = padded_row_count(positions, share)
    assert count <= positions and (count % 8 == 0 or count == positions)
    assert stats.binom.sf(count, positions, share) < 1e-9  # P(more labelled positions than rows)
    if positions >= 1024:
        assert count < 1.5 * positions * share  # a fraction of the dense head's rows still


def test_the_padded_head_gives_the_unpadded_loss_and_gradients_in_float64():
    dense = tiny_bert(dropout=0.0).double().train()
    models = [dense, apply_sparse_mlm_head(copy.deepcopy(dense)),
              apply_sparse_mlm_head(copy.deepcopy(dense), masked_share=SHARE)]
    batch = mlm_batch(8, seed=3)
    outputs = []
    for model in models:
        output = model(**batch)
        output.loss.backward()
        outputs.append(output)
    labelled = int((batch["labels"] != -100).sum())
    assert outputs[2].logits.shape[0] == padded_row_count(batch["labels"].numel(), SHARE) > labelled
    torch.testing.assert_close(outputs[2].logits[:labelled], outputs[1].logits, rtol=1e-12, atol=1e-12)
    for output in outputs[1:]:
        torch.testing.assert_close(output.loss, outputs[0].loss, rtol=1e-12, atol=0)
    for (name, p_dense), p_padded in zip(dense.named_parameters(), models[2].parameters()):
        torch.testing.assert_close(p_padded.grad, p_dense.grad, rtol=1e-9, atol=1e-12, msg=name)
    too_few = apply_sparse_mlm_head(copy.deepcopy(dense), masked_share=0.01)  # 16 rows for ~20 labelled
    with pytest.raises(RuntimeError, match="more labelled positions than its rows"):
        too_few(**batch)


def batches():
    return [mlm_batch(8, seed=100 + i) for i in range(STEPS)]  # gross batches of 8 rows: micro 4 / keep 0.5


def engine(compiled: bool):
    model = apply_sparse_mlm_head(tiny_bert(dropout=0.0), masked_share=SHARE if compiled else None)
    cfg = ds_config(micro=4, criterion="entropy", keep_ratio=0.5, kernel="torch")
    cfg["zero_optimization"]["stage"] = 1
    sift_engine = sift_ds.initialize(model=model, config=cfg)[0]
    return compile_engine(sift_engine, BACKEND) if compiled else sift_engine


def compile_counts():
    """(graphs compiled, graph breaks) so far in this process."""
    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


@pytest.fixture(scope="module")
def runs(single_rank_dist, tmp_path_factory):
    """The eager engine's and the compiled engine's 20 steps on the same gross batches; the compiled
    one saves a checkpoint after step 10, from which a second compiled engine trains steps 11-20."""
    data = batches()
    eager = engine(False)
    eager_losses = [eager.train_step(b).item() for b in data]
    torch._dynamo.reset()
    counters.clear()
    compiled = engine(True)
    save_dir = str(tmp_path_factory.mktemp("compiled"))
    losses, counts = [], []
    for i, batch in enumerate(data):
        losses.append(compiled.train_step(batch).item())
        counts.append(compile_counts())
        if i + 1 == STEPS // 2:
            compiled.save_checkpoint(save_dir, tag="half")
    resumed = engine(True)
    resumed.load_checkpoint(save_dir, tag="half")
    resumed_losses = [resumed.train_step(b).item() for b in data[STEPS // 2:]]
    return dict(eager=eager, eager_losses=eager_losses, compiled=compiled, losses=losses, counts=counts,
                resumed=resumed, resumed_losses=resumed_losses)


def test_no_recompile_and_no_graph_break_after_warm_up(runs):
    counts = runs["counts"]
    assert runs["compiled"].selecting and counts[WARMUP - 1][0] >= 2, "the training and prefix forwards compiled"
    assert counts[-1] == counts[WARMUP - 1], f"(graphs, graph breaks) after each step: {counts}"
    assert counts[-1][1] == 0, dict(counters["graph_break"])


def test_the_compiled_engine_trains_as_the_eager_one(runs):
    torch.testing.assert_close(torch.tensor(runs["losses"]), torch.tensor(runs["eager_losses"]), rtol=1e-5, atol=1e-6)
    for (name, p_eager), p_compiled in zip(runs["eager"].module.named_parameters(), runs["compiled"].module.parameters()):
        torch.testing.assert_close(p_compiled, p_eager, rtol=1e-4, atol=1e-5, msg=name)


def test_a_compiled_engine_resumes_exactly(runs):
    assert runs["resumed_losses"] == runs["losses"][STEPS // 2:]
    for (name, p), p_resumed in zip(runs["compiled"].module.named_parameters(), runs["resumed"].module.parameters()):
        assert torch.equal(p_resumed, p), name


def test_start_up_refusals(tmp_path, capsys):
    cfg = config_file(tmp_path)
    err = one_line_error(capsys, ["--ds_config", cfg, "--compile", "true", "--compile_backend", "no_such_backend"])
    assert "--compile_backend 'no_such_backend' is not a torch.compile backend" in err
    zero3 = config_file(tmp_path, set_key(("zero_optimization", "stage"), 3))
    assert "--compile true with ZeRO stage 3 is not supported" in one_line_error(
        capsys, ["--ds_config", zero3, "--compile", "true"])
    deepcompile = config_file(tmp_path, set_key(("compile", "deepcompile"), True))
    assert "ds_config compile.deepcompile: DeepCompile is not supported with SIFT" in one_line_error(
        capsys, ["--ds_config", deepcompile])


def rows(batch):
    return [{k: v[i] for k, v in batch.items()} for i in range(len(batch["input_ids"]))]


class MaskedRows:
    """Stacks rows masked beforehand (mlm_batch), naming its masking probability as a masked-LM collator does."""
    mlm_probability = SHARE

    def __call__(self, rows):
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


TRAINER_STEPS = 12


def trainer_run(tmp_path, compiled: bool):
    pytest.importorskip("accelerate", reason="SiftTrainer needs accelerate (the hf extra)")
    from transformers import TrainerCallback, TrainingArguments

    from sift_ds.hf import SiftTrainer

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=TRAINER_STEPS,
                             learning_rate=2e-3, logging_steps=1, use_cpu=True, report_to="none", save_strategy="no",
                             seed=3, data_seed=3, dataloader_drop_last=True, torch_compile=compiled,
                             torch_compile_backend=BACKEND if compiled else None)
    trainer = SiftTrainer(model=tiny_bert(dropout=0.0), args=args, train_dataset=rows(mlm_batch(8 * TRAINER_STEPS, seed=5)),
                          data_collator=MaskedRows(), sift={"criterion": "entropy", "keep_ratio": 0.5, "kernel": "torch",
                                                            "selection_start_step": 0, "start_after_lr_peak": True})
    counts = []

    class Count(TrainerCallback):
        def on_step_end(self, *args, **kwargs):
            counts.append(compile_counts())

    trainer.add_callback(Count())
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h], counts


def test_sift_trainer_with_torch_compile(tmp_path, monkeypatch):
    """TrainingArguments(torch_compile=True): Trainer compiles the model (its padded head), SiftTrainer
    the prefix forward; after the warm-up no graph is compiled and none breaks, and the logged losses
    are the eager run's. One process without the launcher's variables (which the in-process engines
    above set): Trainer would wrap the model in DDP, whose own Python forward breaks the graph."""
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    eager, _ = trainer_run(tmp_path / "eager", False)
    torch._dynamo.reset()
    counters.clear()
    compiled, counts = trainer_run(tmp_path / "compiled", True)
    assert counts[WARMUP - 1][0] >= 2 and counts[-1] == counts[WARMUP - 1], counts
    assert counts[-1][1] == 0, dict(counters["graph_break"])
    np.testing.assert_allclose(compiled, eager, rtol=1e-5)
