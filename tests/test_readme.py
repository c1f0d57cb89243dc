"""The README's example runs as written: its Python block, given a tiny BERT, a tokenizer and a
handful of tokenized blocks, trains through the dataloader sift_ds.initialize returns (one rank,
DeepSpeed on the CPU)."""
import os
import re

import torch
from transformers import PreTrainedTokenizerFast

from launcher import REPO
from sift_ds.pretrain.models import build_bert


def readme_example() -> str:
    text = open(os.path.join(REPO, "README.md")).read()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_readme_example_runs(single_rank_dist, capsys):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(os.path.join(REPO, "ds_configs", "tokenizers",
                                                                     "pydoc_wordpiece_4096"))
    torch.manual_seed(0)
    model = build_bert("tiny", vocab_size=tokenizer.vocab_size, max_position_embeddings=64)
    words = open(os.path.join(REPO, "README.md")).read().split()
    dataset = [tokenizer(" ".join(words[i:i + 48]), truncation=True, max_length=64)  # 5 steps: selection from step 3
               for i in range(0, len(words) - 48, (len(words) - 48) // 320)][:320]
    scope = {"model": model, "dataset": dataset, "tokenizer": tokenizer}
    exec(readme_example(), scope)  # noqa: S102 - the documented example, as written
    engine, sel = scope["engine"], scope["sel"]
    assert engine.gross_batch_size == 64 and scope["dataloader"] is not None
    assert engine.global_steps == len(dataset) // 64  # one optimizer step per gross batch of the loader
    assert sel.batch["input_ids"].shape[0] == 32
    kept = torch.zeros(64, dtype=torch.bool)
    kept[sel.indices] = True
    assert sel.scores[kept].min() >= sel.scores[~kept].max()  # the rows with the highest entropy are kept
    assert engine.sift_config.criterion == "entropy"
    assert "sift/selection_share" in capsys.readouterr().out
