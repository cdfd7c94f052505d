"""Build TFF learning and evaluation processes from a task and DP settings.

Imports TensorFlow and TFF. DP aggregators come from TFF's own factories; the
processes read data only through a dataset computation over reference strings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

import tensorflow_federated as tff

from tffprod.privacy.mechanisms import get_mechanism
from tffprod.task import Task
from tffprod.data.tfdata import element_spec, evaluation_dataset_computation, training_dataset_computation

if TYPE_CHECKING:
    from tffprod.privacy.config import DPConfig


def tff_model_fn(task: Task) -> Callable[[], Any]:
    """A no-arg function building the task's model as a ``tff.learning`` model."""
    input_spec = element_spec(task.schema)

    def model_fn():
        return tff.learning.models.from_keras_model(
            task.model_fn(), loss=task.loss_fn(), input_spec=input_spec, metrics=task.metrics_fn()
        )

    return model_fn


def model_aggregator(dp: "DPConfig", *, clients_per_round: int) -> Optional[Any]:
    """The TFF aggregation factory for model updates: the mechanism's (None: the weighted mean)."""
    return get_mechanism(dp.mechanism).aggregator(dp, clients_per_round=clients_per_round)


def build_training_process(task: Task, dp: "DPConfig", *, fmt: str, seed: int, clients_per_round: int) -> Any:
    """FedAvg (weighted), DP-FedAvg (unweighted, DP aggregator) or the task's own process,
    composed so that its client data are dataset references."""
    model_fn = tff_model_fn(task)
    aggregator = model_aggregator(dp, clients_per_round=clients_per_round)
    if task.process_builder is not None:
        process = task.process_builder(task, model_fn, aggregator)
    elif aggregator is None:
        process = tff.learning.algorithms.build_weighted_fed_avg(
            model_fn,
            client_optimizer_fn=task.client_optimizer.build(),
            server_optimizer_fn=task.server_optimizer.build(),
        )
    else:
        process = tff.learning.algorithms.build_unweighted_fed_avg(
            model_fn,
            client_optimizer_fn=task.client_optimizer.build(),
            server_optimizer_fn=task.server_optimizer.build(),
            model_aggregator=aggregator,
        )
    dataset_comp = training_dataset_computation(
        task.schema, fmt, batch_size=task.batch_size, epochs=task.local_epochs, seed=seed
    )
    return tff.simulation.compose_dataset_computation_with_learning_process(dataset_comp, process)


def build_evaluation_process(task: Task, *, fmt: str) -> Any:
    """TFF federated evaluation of the task's model over dataset references."""
    process = tff.learning.algorithms.build_fed_eval(tff_model_fn(task))
    dataset_comp = evaluation_dataset_computation(task.schema, fmt, batch_size=max(task.batch_size, 64))
    return tff.simulation.compose_dataset_computation_with_learning_process(dataset_comp, process)
