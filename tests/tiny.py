"""Debug-size BERT, synthetic MLM batches and the independent float64 score references shared by the
engine tests."""
import math

import torch

from sift_ds.pretrain.models import build_bert

VOCAB = 97


def tiny_bert(layers=3, objective="mlm", seed=0, dropout=0.1):
    torch.manual_seed(seed)
    return build_bert("tiny", vocab_size=VOCAB, objective=objective, max_position_embeddings=64,
                      dropout=dropout, num_hidden_layers=layers)


def mlm_batch(rows, seq=16, seed=0, pad=True, empty_row=True, p_mask=0.2):
    """Token ids with a learnable pattern, 15-20% labelled positions, some padding, and (optionally)
    one row with no labelled position."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(5, VOCAB, (rows, 1), generator=g)
    steps = torch.arange(seq)[None, :]
    ids = 5 + (start + 7 * steps) % (VOCAB - 5)
    noise = torch.rand(rows, seq, generator=g) < 0.1
    ids = torch.where(noise, torch.randint(5, VOCAB, (rows, seq), generator=g), ids)
    attention = torch.ones_like(ids)
    if pad:
        lengths = torch.randint(seq // 2, seq + 1, (rows,), generator=g)
        attention = (steps < lengths[:, None]).long()
        ids = ids * attention  # pad id 0
    labels = torch.where((torch.rand(rows, seq, generator=g) < p_mask) & (attention == 1), ids, torch.full_like(ids, -100))
    if empty_row:
        labels[rows // 2] = -100
    inputs = torch.where(labels != -100, torch.full_like(ids, 4), ids)  # [MASK] = 4
    return {"input_ids": inputs, "attention_mask": attention, "token_type_ids": torch.zeros_like(ids), "labels": labels}


def ds_config(micro=4, gas=1, stage=0, dtype="fp32", **sift):
    """A tiny ds_config with a constant learning rate (no scheduler, so its peak is step 0): selection
    from step 0, unless the test sets a start, is deliberate here (``start_after_lr_peak``)."""
    if "warmup_steps" not in sift:
        sift.setdefault("selection_start_step", 0)
    sift.setdefault("start_after_lr_peak", True)
    cfg = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": gas,
        "optimizer": {"type": "AdamW", "params": {"lr": 2e-3, "weight_decay": 0.01}},
        "zero_optimization": {"stage": stage},
        "gradient_clipping": 1.0,
        "sift": {"exit_layer": 1, **sift},
    }
    if dtype == "bf16":
        cfg["bf16"] = {"enabled": True}
    elif dtype == "fp16":
        cfg["fp16"] = {"enabled": True, "initial_scale_power": 8}
    return cfg


def f64_row_scores(logits, targets, mask, criterion):
    """float64 per-row mean cross-entropy (or entropy) of ``logits`` [B, S, V] against ``targets`` over
    the positions in ``mask`` [B, S] (-inf for a row with none): the tests' independent reference."""
    logp = torch.log_softmax(logits.double(), -1)
    per_token = -(logp.exp() * logp).sum(-1) if criterion == "entropy" else \
        -logp.gather(-1, targets.clamp_min(0)[..., None]).squeeze(-1)
    count = mask.sum(1)
    total = (per_token * mask).sum(1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, -math.inf))


def spread_weights(model, seed):
    """Weights large enough that every layer changes the scores (with the usual 0.02 initialisation
    adjacent layers' scores differ by less than a test tolerance): matrices N(0, 0.3^2), the rest
    shifted by N(0, 0.1^2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if p.dim() == 2:
                p.copy_(noise * 0.3)
            else:
                p.add_(noise * 0.1)
    return model


def hf_reference_scores(model, batch, exit_layer, criterion):
    """float64 scores from ``output_hidden_states`` at layer k and ``cls.predictions`` on every position."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         token_type_ids=batch["token_type_ids"], output_hidden_states=True)
        logits = model.cls.predictions(out.hidden_states[exit_layer])
    model.train(was_training)
    return f64_row_scores(logits, batch["labels"], batch["labels"] != -100, criterion)
