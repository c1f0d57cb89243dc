"""A FLOPs model of a BERT training step: the MLM head's share and what the masked-positions-only
head and SIFT's selection should save, for shapes not measured (e.g. BERT-base on a GPU).

Per token of a forward pass (multiply-adds counted as 2 FLOPs; layer norms, softmax, biases and
embedding look-ups left out): each encoder layer costs 24 H^2 (Q, K, V, output and the 4H
feed-forward) plus 4 S H (attention scores and their weighted sum); the dense MLM head costs
2 (H^2 + H V) (its transform and the decoder onto the vocabulary). A training step is taken as three
forwards (the backward costs two). The masked-positions-only head runs the head on the masked share
``m`` of the positions only. SIFT's selection is a forward (no backward) of the gross batch, ``1 /
keep_ratio`` rows per trained row, through the embeddings and ``exit_layer`` layers plus the head on
the masked positions. Step time is modelled as proportional to FLOPs: a model, not a measurement.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    vocab: int
    seq_len: int

    def encoder_flops(self) -> float:
        """Forward FLOPs per token of all encoder layers."""
        h, s = self.hidden, self.seq_len
        return self.layers * (24.0 * h * h + 4.0 * s * h)

    def head_flops(self) -> float:
        """Forward FLOPs per token of the dense MLM head."""
        h = self.hidden
        return 2.0 * (h * h + h * self.vocab)

    def head_share(self) -> float:
        """The dense head's share of a forward's FLOPs."""
        return self.head_flops() / (self.encoder_flops() + self.head_flops())


BERT_BASE = Shape(layers=12, hidden=768, vocab=30522, seq_len=128)


def head_speedup(shape: Shape, masked_share: float = 0.15) -> float:
    """Training-step FLOPs with the dense head over those with the masked-positions-only head."""
    e, d = shape.encoder_flops(), shape.head_flops()
    return (e + d) / (e + masked_share * d)


def selection_share(shape: Shape, exit_layer: int, keep_ratio: float, masked_share: float = 0.15) -> float:
    """SIFT's selection as a share of a step's FLOPs (selection plus training of the kept rows),
    with the masked-positions-only head in both."""
    per_layer = shape.encoder_flops() / shape.layers
    select = (exit_layer * per_layer + masked_share * shape.head_flops()) / keep_ratio
    train = 3.0 * (shape.encoder_flops() + masked_share * shape.head_flops())
    return select / (select + train)


def sift_speedup(sample_saving: float, share: float) -> float:
    """Wall-clock speed-up of SIFT from its saving in backprop samples and the selection's share of
    the step: the same loss in 1/saving of the trained samples, each step longer by 1/(1 - share)."""
    return sample_saving * (1.0 - share)
