"""``mechanism = "none"``: no differential privacy; updates are averaged, weighted by examples."""

from __future__ import annotations

from typing import Any

from tffprod.privacy.mechanisms.base import DPSettings, Mechanism


class NoDP(Mechanism):
    """Weighted FedAvg, no noise: the aggregator is TFF's default (weighted mean)."""

    name = "none"

    def aggregator(self, dp: DPSettings, *, clients_per_round: int) -> Any:
        return None
