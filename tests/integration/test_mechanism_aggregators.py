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


@pytest.mark.parametrize("placement", ["coordinator", "distributed", "local"])
def test_with_the_noise_at_the_sites_the_coordinators_aggregator_only_clips_and_averages(
        placement: str, worker_context) -> None:
    import numpy as np
    import tensorflow_federated as tff

    config = DPConfig.from_dict({"mechanism": "gaussian_fixed", "noise_multiplier": 2.0, "clip": 1.0, "delta": 1e-5,
                                 "noise_placement": placement})
    process = MECHANISMS["gaussian_fixed"].aggregator(config, clients_per_round=2).create(
        tff.TensorType(np.float32, [2]))
    updates = [np.array([3.0, 4.0], np.float32), np.array([0.3, 0.4], np.float32)]
    state = worker_context.invoke(process.initialize, None)
    result = worker_context.invoke(process.next, tff.structure.Struct.unnamed(state, updates)).result
    exact = np.allclose(result, [0.45, 0.6], rtol=1e-6)  # ([0.6, 0.8] clipped + [0.3, 0.4]) / 2
    assert exact == (placement != "coordinator")
