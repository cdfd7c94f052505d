"""Each registered DP mechanism builds TFF's aggregator for itself (imports TFF)."""

from __future__ import annotations

import pytest

from tffprod.privacy.config import DPConfig
from tffprod.privacy.mechanisms import MECHANISMS


@pytest.mark.parametrize("name", sorted(MECHANISMS))
def test_the_mechanism_builds_an_aggregator_that_tff_can_create(name: str) -> None:
    import numpy as np
    import tensorflow_federated as tff

    mechanism = MECHANISMS[name]
    values = {"noise_multiplier": 0.5, "clip": 1.5, "delta": 1e-5}
    config = DPConfig.from_dict({"mechanism": name, **{k: v for k, v in values.items() if k in mechanism.keys}})
    factory = mechanism.aggregator(config, clients_per_round=10)
    if not mechanism.private:
        assert factory is None  # the learning algorithm's default: the weighted mean
        return
    assert isinstance(factory, tff.aggregators.UnweightedAggregationFactory)
    process = factory.create(tff.TensorType(np.float32, [3]))
    assert process.is_weighted is False
    assert "query_state" in str(process.initialize.type_signature.result)
