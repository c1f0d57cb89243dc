"""A selection criterion registered from outside the package, the way a user's module would: the sum
over a row's scored tokens of the exit loss to a power (its sub-config key ``loss_power``), with a
count of the selections it scored as its state."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sift_ds.config_io import key_field
from sift_ds.criteria import Criterion, register_criterion
from sift_ds.kernels import per_id_sums

NAME = "power_loss_sum"


@dataclass(frozen=True)
class PowerOptions:
    loss_power: float = key_field(1.0, "power_loss_sum: the power of each scored token's exit loss")


@register_criterion
class PowerLossSum(Criterion):
    name = NAME
    Options = PowerOptions
    statistic, per_token = "loss", True

    def __init__(self, options, config):
        super().__init__(options, config)
        self.selections = 0

    @classmethod
    def check_options(cls, options, config) -> None:
        if options.loss_power <= 0:
            raise ValueError(f"sift.{NAME}.loss_power must be > 0, got {options.loss_power}")

    def score(self, exit, inputs):
        sums, counts = per_id_sums(exit.rows, exit.values.double().pow(self.options.loss_power), inputs.num_rows)
        if inputs.update:
            self.selections += 1
        return torch.where(counts > 0, sums, torch.full_like(sums, float("-inf"))).float()

    def state_dict(self):
        return {"selections": self.selections}

    def load_state_dict(self, state):
        self.selections = int(state["selections"])
