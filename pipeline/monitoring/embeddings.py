"""What the monitored model sees: its image and text embeddings and its predictions.

The monitored model is the registry's @champion when one exists, else the freshly trained
artifacts/model (the DVC stage runs before anything is registered). One forward pass per batch
gives both embeddings and the class probabilities, so embedding drift and prediction drift are
measured on the same pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from pipeline.errors import StageFailed
from pipeline.params import Params
from pipeline.paths import Paths


@dataclass
class MonitoredModel:
    model: object  # pipeline.model.MMGuardModel
    source: str  # "models:/<name>@champion (version N)" or the model folder
    run_id: str | None  # the MLflow run the reports are logged to, when known


@dataclass
class ModelView:
    image: np.ndarray  # [N, D] L2-normalised image embeddings
    text: np.ndarray  # [N, D] L2-normalised text embeddings
    probs: np.ndarray  # [N, C] class probabilities


def _champion(params: Params, root: Path) -> MonitoredModel | None:
    """The registry's champion, or None when there is no store, model or alias yet."""
    from pipeline import registry, tracking

    uri = tracking.tracking_uri(params, root)
    if tracking.missing_sqlite_store(uri):
        return None  # never create an empty store just to find it has no champion
    import mlflow

    from pipeline.registry import store

    try:
        client, uri = store.client_for(params, root)
    except registry.RegistryUnavailable as exc:
        # Falling back to artifacts/model would judge drift with a model that serves nothing.
        raise StageFailed(f"cannot load the @champion to monitor: {exc}") from None
    name = registry.model_name(params)
    version = store.alias_version(client, name, registry.CHAMPION)
    if version is None:
        return None
    from pipeline import serving

    with tracking.using_uri(uri):
        # The served pyfunc's own loader, so drift sees exactly the weights that serve traffic;
        # the version the alias named, pinned: no thread that follows the alias mid-stage.
        pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}",
                                          model_config=serving.PINNED)
    return MonitoredModel(pyfunc.unwrap_python_model().model,
                          f"models:/{name}@{registry.CHAMPION} (version {version.version})",
                          version.run_id)


def load_monitored_model(params: Params, paths: Paths) -> MonitoredModel:
    monitored = _monitored_model(params, paths)
    # Frozen pretrained trunks read the embed stage's features instead of running again; a
    # champion whose trunks differ (other weights) finds no entries and runs them.
    monitored.model.attach_cache_if_built(paths.embeddings)
    return monitored


def _monitored_model(params: Params, paths: Paths) -> MonitoredModel:
    from pipeline.model import load_model

    champion = _champion(params, paths.root)
    if champion is not None:
        return champion
    if not (paths.model_dir / "config.json").exists():
        raise StageFailed(f"no @champion in the registry and no trained model in {paths.model_dir}"
                          "; run `mmguard train` first")
    run_file = paths.train_dir / "mlflow_run.json"
    run_id = None
    if run_file.exists():
        import json

        run_id = json.loads(run_file.read_text()).get("run_id")
    return MonitoredModel(load_model(paths.model_dir), str(paths.model_dir), run_id)


def model_view(model, images: Sequence[Image.Image], texts: Sequence[str],
               batch_size: int = 64) -> ModelView:
    """Embeddings and probabilities for image/text pairs, in eval mode, without gradients."""
    import torch

    if len(images) != len(texts):
        raise ValueError(f"{len(images)} images but {len(texts)} texts")
    was_training = model.training
    model.eval()
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                pixels = torch.stack([model.preprocess(image)
                                      for image in images[start:start + batch_size]])
                tokens = model.tokenize(texts[start:start + batch_size])
                output = model(pixels.to(model.device), tokens.to(model.device))
                parts.append((output.image_emb.float().cpu().numpy(),
                              output.text_emb.float().cpu().numpy(),
                              output.logits.float().softmax(dim=-1).cpu().numpy()))
    finally:
        model.train(was_training)
    if not parts:
        raise ValueError("no image/text pairs to embed")
    image, text, probs = (np.concatenate(column) for column in zip(*parts))
    return ModelView(image=image, text=text, probs=probs)
