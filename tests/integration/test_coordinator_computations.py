"""The coordinator's computations frozen for the plan cache and thawed again return what the built ones
return: the same Python containers (state, model weights, round output), the same values, and a DP event
that TFF's extraction reads (adaptive clipping composes two events; user-level DP runs its own process)."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest

from tffprod.examples import digits, fraud
from tffprod.privacy.config import DPConfig
from tests.helpers.tff_values import value_of

ADAPTIVE = DPConfig(mechanism="gaussian_adaptive", noise_multiplier=0.1, clip=1.0, delta=1e-5, target_quantile=0.5,
                    learning_rate=0.2)


def _process(kind: str):
    from tffprod.training.process import build_training_process
    from tffprod.training.user_level import build_user_level_process

    if kind == "dp-adaptive":
        return digits.task, build_training_process(digits.task, ADAPTIVE, fmt="tfrecord", seed=0, clients_per_round=3)
    return fraud.task, build_user_level_process(fraud.task, fmt="csv", clip=1.0, noise_stddev=1.0, expected_users=10.0)


def _zeros(type_spec):
    """A value of ``type_spec`` (the merged partials' type) with every tensor zero."""
    return value_of(type_spec, lambda t: np.zeros([d or 0 for d in t.shape], dtype=np.dtype(t.dtype)))


def _flat(value):
    import tensorflow as tf

    return [np.asarray(leaf) for leaf in tf.nest.flatten(value)]


@pytest.mark.parametrize("kind", ["dp-adaptive", "user-level"])
def test_thawed_computations_return_what_the_built_ones_return(kind, worker_context) -> None:
    import tensorflow as tf
    import tensorflow_federated as tff
    from tensorflow_federated.python.aggregators.differential_privacy import extract_dp_event_from_state

    from tffprod.training import coordinator
    from tffprod.training.trainer import initial_weights

    task, process = _process(kind)
    built = coordinator.from_process(process, tff.backends.native.compile_to_mergeable_comp_form(process.next))
    thawed = coordinator.thaw(json.loads(json.dumps(coordinator.freeze(built))))
    assert thawed.up_to_merge is None and thawed.up_to_merge_type == built.up_to_merge_type
    for role in coordinator.ROLES:
        ours, theirs = getattr(thawed, role).type_signature, getattr(built, role).type_signature
        assert str(ours) == str(theirs) and coordinator._containers(ours) == coordinator._containers(theirs), role

    Struct, ctx = tff.structure.Struct, worker_context
    weights = initial_weights(task, 0)
    states = [ctx.invoke(c.set_model_weights, Struct.unnamed(ctx.invoke(c.initialize, None), weights))
              for c in (built, thawed)]
    tf.nest.assert_same_structure(*states, check_types=False)
    assert type(states[0]) is type(states[1]) and type(states[0].aggregator) is type(states[1].aggregator)
    assert all(np.array_equal(a, b) for a, b in zip(_flat(states[0]), _flat(states[1])))
    got = [ctx.invoke(c.get_model_weights, s) for c, s in zip((built, thawed), states)]
    assert type(got[0]) is type(got[1]) is tff.learning.models.ModelWeights
    assert all(np.array_equal(a, b) for a, b in zip(_flat(got[0]), _flat(got[1])))

    merged = _zeros(built.merge.type_signature.result)
    outputs = [ctx.invoke(c.after_merge, Struct.unnamed(Struct.unnamed(s, []), merged))
               for c, s in zip((built, thawed), states)]
    assert type(outputs[0]) is type(outputs[1]) and type(outputs[0].state) is type(outputs[1].state)
    tf.nest.assert_same_structure(outputs[0].state, outputs[1].state, check_types=False)
    assert outputs[0].metrics.keys() == outputs[1].metrics.keys()
    assert extract_dp_event_from_state(outputs[1].state.aggregator) == \
        extract_dp_event_from_state(outputs[0].state.aggregator)


def test_containers_are_named_by_their_import_path_or_as_named_tuples() -> None:
    from tffprod.training import coordinator

    assert coordinator._name_of(collections.OrderedDict) == {"container": "collections:OrderedDict"}
    from tensorflow_privacy.privacy.dp_query import gaussian_query

    state = gaussian_query.GaussianSumQuery._GlobalState  # a class attribute, not a module one
    assert coordinator._name_of(state) == {"container": "tensorflow_privacy.privacy.dp_query.gaussian_query:"
                                                        "GaussianSumQuery._GlobalState"}
    made = collections.namedtuple("Made", ["a", "b"])  # made on the fly, as dp_accounting's event tuples
    assert coordinator._name_of(made) == {"namedtuple": ["Made", ["a", "b"]]}

    class Local:
        pass

    with pytest.raises(coordinator.NotFreezable, match="cannot be imported by name"):
        coordinator._name_of(Local)
