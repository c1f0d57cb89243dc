"""The masked-positions-only MLM head (``sift_ds.mlm_head.apply_sparse_mlm_head``) on every built-in
masked-LM family: loss and gradients equal to the dense HF forward of the same weights in float64
(same dropout draws), the logits of the labelled rows, the dense forward in eval mode; and through
``transformers.Trainer`` / ``SiftTrainer`` (gradient accumulation): the same training losses,
parameters and evaluation metrics as the dense model."""
import copy
import inspect

import numpy as np
import pytest
import torch
from transformers import AutoConfig, BertForPreTraining, LlamaConfig, LlamaForCausalLM

from sift_ds.mlm_head import apply_sparse_mlm_head, is_patched
from test_families import CASES, PAD, VOCAB, build, padded_batch


def pair(name):
    if name == "bert_pretraining":
        torch.manual_seed(0)
        config = AutoConfig.for_model("bert", vocab_size=VOCAB, pad_token_id=PAD, **CASES["bert"][1])
        dense = BertForPreTraining(config).double()
    else:
        dense = build(name).train()
    return dense, apply_sparse_mlm_head(copy.deepcopy(dense))


def run(model, batch, seed=7, **kwargs):
    torch.manual_seed(seed)  # the same dropout draws in both models (the heads have no dropout)
    model.zero_grad()
    out = model(**batch, **kwargs)
    out.loss.backward()
    return out


def assert_same_grads(dense, sparse):
    for (name, p_d), p_s in zip(dense.named_parameters(), sparse.parameters()):
        assert (p_d.grad is None) == (p_s.grad is None), name
        if p_d.grad is not None:
            torch.testing.assert_close(p_s.grad, p_d.grad, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("name", sorted(CASES) + ["bert_pretraining"])
def test_loss_grads_and_logits_equal_the_dense_forward(name):
    dense, sparse = pair(name)
    batch = padded_batch(dense)
    if name == "bert_pretraining":
        batch["next_sentence_label"] = torch.tensor([0, 1, 1, 0, 1])
    out_d, out_s = run(dense, batch), run(sparse, batch)
    torch.testing.assert_close(out_s.loss, out_d.loss, rtol=1e-12, atol=1e-12)
    assert_same_grads(dense, sparse)
    key = "prediction_logits" if name == "bert_pretraining" else "logits"
    labelled = batch["labels"] != -100
    assert out_s[key].shape == (int(labelled.sum()), VOCAB)  # the labelled rows, row-major
    torch.testing.assert_close(out_s[key], out_d[key][labelled].detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["bert", "tiny_modernbert"])
def test_trainer_loss_arguments_reduce_as_the_dense_model(name):
    """Trainer passes ``num_items_in_batch`` (the window's labelled tokens) to a forward with **kwargs:
    ModernBERT's loss divides by it, BERT's takes the mean; the sparse head reduces as the model does."""
    dense, sparse = pair(name)
    batch = padded_batch(dense)
    items = torch.tensor(3 * int((batch["labels"] != -100).sum()))
    out_d, out_s = run(dense, batch, num_items_in_batch=items), run(sparse, batch, num_items_in_batch=items)
    torch.testing.assert_close(out_s.loss, out_d.loss, rtol=1e-12, atol=1e-12)
    assert_same_grads(dense, sparse)


def test_eval_mode_and_no_labels_are_the_dense_forward(tmp_path):
    dense, sparse = pair("bert")
    batch = padded_batch(dense)
    dense.eval(), sparse.eval()
    with torch.no_grad():
        out_d, out_s = dense(**batch), sparse(**batch)
    torch.testing.assert_close(out_s.loss, out_d.loss, rtol=0, atol=0)
    torch.testing.assert_close(out_s.logits, out_d.logits, rtol=0, atol=0)  # [B, S, V]
    sparse.train()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        assert sparse(**inputs).logits.shape == (*batch["labels"].shape, VOCAB)
    sparse.save_pretrained(tmp_path)  # the weights and config of the HF class
    assert '"BertForMaskedLM"' in (tmp_path / "config.json").read_text()


def test_the_patch_keeps_the_signature_copies_and_is_idempotent():
    dense, sparse = pair("tiny_roberta")
    assert is_patched(sparse) and not is_patched(dense)
    assert inspect.signature(sparse.forward) == inspect.signature(dense.forward)  # Trainer's loss-kwargs check
    forward = sparse.forward
    assert apply_sparse_mlm_head(sparse).forward == forward
    clone = copy.deepcopy(sparse)
    assert is_patched(clone) and clone.forward.__self__ is clone
    assert sparse.state_dict().keys() == dense.state_dict().keys()
    causal = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(TypeError, match="masked LM of a built-in family"):
        apply_sparse_mlm_head(causal)


# ---------------------------------------------------------------------- through Trainer


class Rows(torch.utils.data.Dataset):
    def __init__(self, batch):
        self.batch = batch

    def __len__(self):
        return len(self.batch["input_ids"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.batch.items()}


def accuracy(prediction):
    preds, labels = prediction.predictions.argmax(-1), prediction.label_ids
    mask = labels != -100
    return {"accuracy": float((preds[mask] == labels[mask]).mean()), "n": int(mask.sum())}


def train(model, kind, tmp_path, data, sparse_mlm_head=None):
    pytest.importorskip("accelerate", reason="Trainer needs accelerate (the hf extra)")
    from transformers import Trainer, TrainingArguments

    from sift_ds.hf import SiftTrainer

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, per_device_eval_batch_size=5,
                             gradient_accumulation_steps=2, max_steps=3, learning_rate=1e-2, logging_steps=1,
                             use_cpu=True, report_to="none", save_strategy="no", seed=3, data_seed=3,
                             dataloader_drop_last=True)
    kwargs = dict(model=model, args=args, train_dataset=Rows(data), eval_dataset=Rows(data),
                  compute_metrics=accuracy)
    if kind == "trainer":
        trainer = Trainer(**kwargs)
    else:
        trainer = SiftTrainer(**kwargs, sift={"enabled": kind == "sift", "keep_ratio": 0.5, "kernel": "torch",
                                                "selection_start_step": 0, "start_after_lr_peak": True},
                              **({} if sparse_mlm_head is None else {"sparse_mlm_head": sparse_mlm_head}))
    dims = []  # logits [N, V] (sparse) or [B, S, V] (dense) of each training forward
    trainer.model.register_forward_hook(lambda m, i, out: dims.append(out.logits.dim()) if m.training else None)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return losses, trainer.evaluate(), trainer.model, set(dims)


@pytest.mark.parametrize("kind", ["trainer", "sift_off", "sift"])
def test_trainer_trains_and_evaluates_as_the_dense_model(kind, tmp_path):
    """Float64 tiny BERT, 3 optimizer steps of 2 micro-batches: the dense model under plain Trainer
    (and, for SIFT on, SiftTrainer with ``sparse_mlm_head=False``) against the sparse head (the patch
    under Trainer; SiftTrainer's default with SIFT off and on): the same logged losses, parameters,
    evaluation loss and accuracy."""
    dense, _ = pair("bert")
    dense_init = copy.deepcopy(dense)
    rows = [padded_batch(dense, seed=s) for s in range(4)]
    data = {k: torch.cat([r[k] for r in rows]) for k in rows[0]}
    if kind == "trainer":
        ref = train(dense, "trainer", tmp_path / "dense", data)
        got = train(apply_sparse_mlm_head(dense_init), "trainer", tmp_path / "sparse", data)
    else:
        ref = train(dense, "trainer" if kind == "sift_off" else kind, tmp_path / "dense", data, sparse_mlm_head=False)
        got = train(dense_init, kind, tmp_path / "sparse", data)
        assert is_patched(got[2]) and not is_patched(ref[2])
    assert ref[3] == {3} and got[3] == {2}
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-9)
    for (name, p_ref), p_got in zip(ref[2].named_parameters(), got[2].parameters()):
        # An attention key bias adds one constant to each query's scores, which the softmax ignores: its
        # gradient is 0 up to rounding (~1e-17), and AdamW turns that rounding into steps of lr * g / eps
        # (~1e-11) whose sign depends on the summation order of the run's thread count.
        atol = 1e-9 if name.endswith("attention.self.key.bias") else 1e-12
        torch.testing.assert_close(p_got, p_ref, rtol=1e-9, atol=atol, msg=name)
    assert got[1]["eval_accuracy"] == ref[1]["eval_accuracy"] and got[1]["eval_n"] == ref[1]["eval_n"] > 0
    assert got[1]["eval_loss"] == pytest.approx(ref[1]["eval_loss"], rel=1e-12)
