"""Model artifacts: what a trained version is stored as, and how it is exported.

A version's artifact directory holds ``saved_model/`` (a SavedModel whose
``serving_default`` signature takes the raw features by name) and
``model.keras``. Saving imports TensorFlow; exporting is a copy and does not.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tffprod.errors import TffprodError
from tffprod.task import Task

if TYPE_CHECKING:
    from tffprod.registry.protocol import RegistryStore

FORMATS = ("savedmodel", "keras")
SAVED_MODEL_DIR = "saved_model"
KERAS_FILE = "model.keras"
WEIGHTS_FILE = "weights.npz"


def keras_model_with_weights(task: Task, weights: Any) -> Any:
    """A fresh Keras model of the task holding ``weights`` (a ``tff.learning.models.ModelWeights``)."""
    model = task.model_fn()
    weights.assign_weights_to(model)
    return model


def save_artifacts(task: Task, weights: Any, out_dir: Path) -> Path:
    """Write the SavedModel and the Keras file for ``weights`` into ``out_dir``."""
    import tensorflow as tf

    from tffprod.data.tfdata import element_spec

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = keras_model_with_weights(task, weights)
    model.save(out_dir / KERAS_FILE)
    _save_weights(weights, out_dir / WEIGHTS_FILE)

    feature_specs, _ = element_spec(task.schema)
    names = list(feature_specs)

    module = tf.Module()
    module.model = model

    @tf.function(input_signature=list(feature_specs.values()))
    def serve(*features):
        return {"predictions": module.model(dict(zip(names, features)), training=False)}

    module.serve = serve
    tf.saved_model.save(module, str(out_dir / SAVED_MODEL_DIR), signatures={"serving_default": serve})
    return out_dir


def _save_weights(weights: Any, path: Path) -> None:
    import numpy as np

    arrays = {f"t{i}": np.asarray(w) for i, w in enumerate(weights.trainable)}
    arrays.update({f"n{i}": np.asarray(w) for i, w in enumerate(weights.non_trainable)})
    np.savez(path, **arrays)


def load_weights(artifact_dir: str | Path) -> Any:
    """The ``tff.learning.models.ModelWeights`` stored in a version's artifact."""
    import numpy as np
    import tensorflow_federated as tff

    with np.load(Path(artifact_dir) / WEIGHTS_FILE) as data:
        count = lambda prefix: sum(1 for k in data.files if k.startswith(prefix))  # noqa: E731
        trainable = [data[f"t{i}"] for i in range(count("t"))]
        non_trainable = [data[f"n{i}"] for i in range(count("n"))]
    return tff.learning.models.ModelWeights(trainable=trainable, non_trainable=non_trainable)


def export_artifact(artifact_dir: str | Path, out: str | Path, *, fmt: str = "savedmodel",
                    card: dict[str, Any] | None = None) -> Path:
    """Copy a version's artifact in format ``fmt`` to ``out`` (a directory, or a ``.keras`` file path).

    With ``card``, ``model_card.json`` and ``model_card.md`` are written beside the model: inside
    the SavedModel directory, or as ``NAME.model_card.json`` / ``.md`` next to a ``.keras`` file.

    Raises:
        TffprodError: unknown format, missing artifact, or ``out`` already exists.
    """
    from tffprod.models.card import write_card

    if fmt not in FORMATS:
        raise TffprodError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    artifact_dir, out = Path(artifact_dir), Path(out)
    source = artifact_dir / (SAVED_MODEL_DIR if fmt == "savedmodel" else KERAS_FILE)
    if not source.exists():
        raise TffprodError(f"model artifact {source} is missing")
    if fmt == "keras" and out.suffix != ".keras":
        out = out / KERAS_FILE
    if out.exists() and (fmt == "keras" or any(out.iterdir())):
        raise TffprodError(f"{out} already exists; choose a new --out path")
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "savedmodel":
        shutil.copytree(source, tmp)
        if card is not None:
            write_card(card, tmp)
        if out.exists():
            out.rmdir()
    else:
        shutil.copy2(source, tmp)
        if card is not None:
            write_card(card, out.parent, prefix=f"{out.stem}.")
    tmp.rename(out)
    return out


def export_version(registry: RegistryStore, ref: str, out: str | Path, *, fmt: str = "savedmodel",
                   for_site: str | None = None) -> dict[str, Any]:
    """Export a registered model version with its model card, for ``for_site`` if given.

    Args:
        registry: The open registry.
        ref: ``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS``.
        out: Where to write (see :func:`export_artifact`).
        fmt: ``"savedmodel"`` or ``"keras"``.
        for_site: The site that will receive the model; it must be on the version's access
            list. None: an operator export (no check).

    Returns:
        ``{"name", "version", "format", "path", "for", "card"}`` (``card``: the card files).

    Raises:
        AccessDeniedError: ``for_site`` may not receive the version (nothing is written).
        NotFoundError: unknown version or alias.
        TffprodError: see :func:`export_artifact`.
    """
    from tffprod.models.access import require_access
    from tffprod.models.card import CARD_JSON, CARD_MARKDOWN, model_card

    version = registry.get_model_version(ref)
    if for_site is not None:
        require_access(registry, version, for_site)
    card = model_card(version, registry.list_evaluations(version["name"], version["version"], kind=None),
                      exported_for=for_site)
    path = export_artifact(version["artifact_path"], out, fmt=fmt, card=card)
    base, prefix = (path, "") if fmt == "savedmodel" else (path.parent, f"{path.stem}.")
    registry.record_action("model.export", f"{version['name']}:{version['version']}",
                           {"format": fmt, "path": str(Path(path).resolve()), "for": for_site})
    return {"name": version["name"], "version": version["version"], "format": fmt, "path": str(path),
            "for": for_site, "card": [str(base / f"{prefix}{CARD_JSON}"), str(base / f"{prefix}{CARD_MARKDOWN}")]}
