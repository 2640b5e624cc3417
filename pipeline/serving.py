"""The MLflow pyfunc model: a dataframe of (image, text) in, label + class probabilities out.

Input columns: `image` — the image file's bytes, or base64 of them; never a path (the serving
process reads no file a client names; `mmguard predict` resolves paths on the caller's side) —
and `text`. Output columns: `label` (class name), `label_index`, one `prob_<class name>`
column per class, in the task's class order, and `model_version`, the registry version that
scored the request (null when the registry could not say).

The served model follows its alias (pipeline/hot_swap.py): every `serving.refresh_seconds` it
re-reads `serving.follow_alias` (default @champion) and swaps a moved version in, off the request
path; a request scores with the model it started on. With `serving.shadow` (e.g. challenger)
each request is also scored by that alias on a background queue, into the capture log only
(pipeline/monitoring/shadow.py).

Every request is checked against caps before any image is decoded: rows per request, bytes of
image and text data, text length, and per image its bytes and pixels (ingest's limits, checked
the way ingest checks them, pipeline/images.py). A request that breaks one gets a 400 whose
message is one line naming the row and the limit; nothing of the input, no traceback.

Registered as "model from code" (pipeline/registry/packaging.py logs this file, with the pipeline package
as code_paths), so nothing is unpickled at load time: the weights are safetensors, the config
JSON, and this file is imported. The model is put in eval mode once, at load, and never switched
again, so the scoring server's threads can share it.
"""
from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import asdict, dataclass

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel
from PIL import Image

from pipeline import hot_swap, images, operating_points
from pipeline.monitoring import capture, shadow
from pipeline.params import Params, parse_params
from pipeline.prediction_checks import probability_column

INPUT_COLUMNS = ("image", "text")
DEFAULT_BATCH_SIZE = 64
MAX_BATCH_SIZE = 1024


class BadInput(MlflowException):
    """The request cannot be scored; the message names the row and why. An MlflowException with
    INVALID_PARAMETER_VALUE, so the scoring server answers 400 rather than 500."""

    def __init__(self, message: str, error_code: int = INVALID_PARAMETER_VALUE):
        super().__init__(" ".join(message.split()), error_code=error_code)

    # The scoring server rewrites the message of any MlflowException from predict() to
    # "Failed to predict data '<the whole input frame>'. \nError: …" (megabytes, many lines);
    # the first message set is kept, so a client reads the one line written here.
    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_message"):
            self._message = value


@dataclass(frozen=True)
class ServingLimits:
    max_rows: int
    max_request_bytes: int
    max_text_chars: int
    max_image_bytes: int
    max_image_pixels: int
    min_image_side: int

    @classmethod
    def from_params(cls, params: Params) -> ServingLimits:
        return cls(params.serving.max_rows, params.serving.max_request_bytes,
                   params.ingest.max_text_chars, params.ingest.max_image_bytes,
                   params.ingest.max_image_pixels, params.ingest.min_image_side)

    def image_limits(self) -> images.ImageLimits:
        return images.ImageLimits(self.max_image_pixels, self.min_image_side,
                                  self.max_image_bytes)


def follow_config(params: Params, alias: str | None = None,
                  name: str | None = None) -> dict | None:
    """The model config's `follow` section: which registered model and aliases the served
    process follows (`alias`/`name` override serving.follow_alias and registry.model_name, e.g.
    with those of a models:/name@alias URI). None when neither following nor shadow scoring is
    asked for."""
    serving = params.serving
    alias = alias or serving.follow_alias
    if alias is None and serving.shadow is None:
        return None
    return hot_swap.FollowSettings(
        model_name=name or params.registry.model_name.format(task=params.task), alias=alias,
        refresh_seconds=serving.refresh_seconds,
        registry_timeout_s=params.monitoring.registry_timeout_s,
        shadow=None if serving.shadow == alias else serving.shadow,
        shadow_max_pending=serving.shadow_max_pending).as_config()


def model_config(params: Params) -> dict:
    """What `mlflow.pyfunc.log_model(model_config=…)` should carry, so the served model
    enforces this project's limits rather than the defaults, and follows the aliases params
    name. Both keys are always present: MLflow lets a loader override only keys the logged
    config has (`load_model(model_config=PINNED)`, MLFLOW_PYFUNC_INFERENCE_CONFIG)."""
    return {"limits": asdict(ServingLimits.from_params(params)),
            "follow": follow_config(params)}


# Load-time override for callers that score one version as it is (the gate; MLflow's own load
# while `register` logs the model): no following, no shadow.
PINNED = {"follow": None}


def limits_from_config(config: dict | None) -> ServingLimits:
    given = (config or {}).get("limits")
    return ServingLimits(**given) if given else ServingLimits.from_params(parse_params({}))


def _cell_size(value: object) -> int:
    return len(value) if isinstance(value, (str, bytes, bytearray)) else 0


def check_request(frame: pd.DataFrame, limits: ServingLimits) -> None:
    """Request-wide caps, before anything is decoded."""
    missing = [c for c in INPUT_COLUMNS if c not in frame.columns]
    if missing:
        raise BadInput(f"input is missing the columns {missing}; expected {list(INPUT_COLUMNS)}")
    if len(frame) > limits.max_rows:
        raise BadInput(f"{len(frame)} rows, over serving.max_rows = {limits.max_rows}; "
                       "split the request")
    size = sum(_cell_size(v) for column in INPUT_COLUMNS for v in frame[column])
    if size > limits.max_request_bytes:
        raise BadInput(f"{size} bytes of image and text data, over serving.max_request_bytes "
                       f"= {limits.max_request_bytes}; split the request")


def image_bytes(value: object, max_bytes: int) -> bytes:
    """The image file's bytes from raw bytes or base64; a path string is not base64."""
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif isinstance(value, str) and value:
        if len(value) > (max_bytes + 2) // 3 * 4:  # its base64 is longer than the cap allows
            raise BadInput(f"image is over ingest.max_image_bytes = {max_bytes}")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise BadInput("image is not base64 of an image file (paths are not accepted: "
                           "send the file's bytes)") from None
    else:
        raise BadInput(f"image must be base64 of the image file's bytes, got "
                       f"{type(value).__name__}")
    return data


def decode_image(value: object, limits: ServingLimits) -> Image.Image:
    """An RGB image, decoded and checked the way ingest checks images."""
    try:
        return images.decode(image_bytes(value, limits.max_image_bytes),
                             limits.image_limits()).image
    except images.ImageRejected as exc:
        raise BadInput(f"image rejected ({exc.reason}): {exc.detail}") from None


def decode_text(value: object, max_chars: int) -> str:
    if not isinstance(value, str):
        raise BadInput(f"text must be a string, got {type(value).__name__}")
    if len(value) > max_chars:
        raise BadInput(f"text has {len(value)} characters, over ingest.max_text_chars = "
                       f"{max_chars}")
    return value


def batch_size_of(params: dict | None) -> int:
    value = (params or {}).get("batch_size") or DEFAULT_BATCH_SIZE
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or not 1 <= value <= MAX_BATCH_SIZE:
        raise BadInput(f"batch_size must be an integer in 1..{MAX_BATCH_SIZE}")
    return int(value)


def output_frame(probs: np.ndarray, class_names: tuple[str, ...] | list[str],
                 version: str | None = None,
                 operating: operating_points.Served | None = None) -> pd.DataFrame:
    """The response. `operating`: the version's temperature (applied to `probs`) and, binary,
    its threshold: the `decision` column, 1 = flagged (absent when it has no threshold)."""
    decision = None
    if operating is not None:
        probs, decision = operating.apply(probs)
    predicted = probs.argmax(axis=1)
    frame = pd.DataFrame({"label": [class_names[i] for i in predicted],
                          "label_index": predicted.astype(np.int64)})
    for k, name in enumerate(class_names):
        frame[probability_column(name)] = probs[:, k].astype(np.float64)
    frame["model_version"] = pd.Series([version] * len(frame), dtype=object)
    if decision is not None:
        frame["decision"] = decision.astype(np.int64)
    return frame


def score(served: hot_swap.ServedModel, images_in: list, texts: list,
          batch_size: int) -> pd.DataFrame:
    """One model's answer to decoded rows (the served path and the shadow worker)."""
    probs = served.model.predict_proba(images_in, texts, batch_size=batch_size)
    return output_frame(np.asarray(probs, dtype=np.float64), tuple(served.model.class_names),
                        served.version, served.operating)


class MMGuardPyfunc(PythonModel):
    """Scores a batch of (image, text) rows with the trained MMGuardModel."""

    def load_context(self, context) -> None:
        import torch

        from pipeline.model import load_model

        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = load_model(context.artifacts["model_dir"], device=device)
        # Once, here: predict_proba leaves an eval-mode model's mode alone, so concurrent
        # requests never see dropout switched on by another thread.
        model.eval().requires_grad_(False)
        config = getattr(context, "model_config", None) or {}
        self.class_names = tuple(model.class_names)
        self.limits = limits_from_config(config)
        follow = hot_swap.FollowSettings.from_config(config.get("follow"))
        # The store this process resolved the model from (MLFLOW_TRACKING_URI for `mlflow
        # models serve`, the project's store for `mmguard predict`), kept for later look-ups.
        registry_uri = mlflow.get_registry_uri()
        timeout = follow.registry_timeout_s if follow else capture._settings().registry_timeout_s
        identity = capture._model_identity(context, registry_uri, timeout)
        self.served = hot_swap.Slot(follow.alias if follow else None,
                                    hot_swap.ServedModel(
                                        model, **identity,
                                        operating=operating_points.Served.from_config(config)))
        self.shadow = self.follower = None
        if follow is None:
            return
        slots = [self.served]
        if follow.shadow:
            shadow_slot = hot_swap.Slot(follow.shadow)
            self.shadow = shadow.ShadowScorer(shadow_slot, follow.shadow_max_pending, score)
            slots.append(shadow_slot)
        self.follower = hot_swap.Follower(registry_uri, follow, slots, device,
                                          self.class_names).start()

    @property
    def model(self):
        """The model serving now (drift's monitor reads its towers)."""
        return self.served.current.model

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None):
        if not isinstance(model_input, pd.DataFrame):
            raise BadInput(f"input must be a table with columns {list(INPUT_COLUMNS)}")
        served = self.served.current  # this request's model, whatever a swap does meanwhile
        check_request(model_input, self.limits)
        batch_size = batch_size_of(params)
        images_in, texts = [], []
        for row, (image, text) in enumerate(zip(model_input["image"], model_input["text"])):
            try:
                texts.append(decode_text(text, self.limits.max_text_chars))
                images_in.append(decode_image(image, self.limits))
            except BadInput as exc:
                raise BadInput(f"row {row}: {exc.message}") from None
        if not images_in:
            return output_frame(np.zeros((0, len(self.class_names))), self.class_names,
                                served.version, served.operating)
        try:
            output = score(served, images_in, texts, batch_size)
        except Exception as exc:  # noqa: BLE001 - one line to the client, not a traceback
            raise BadInput(f"the model failed on this request ({type(exc).__name__})",
                           error_code=INTERNAL_ERROR) from None
        request_id = uuid.uuid4().hex
        capture.record(context, model_input, images_in, texts, output,  # the monitoring log
                       scored_by=served.identity, request_id=request_id)
        if self.shadow is not None and capture.active():
            self.shadow.submit(model_input, images_in, texts, request_id, served.version,
                               batch_size)
        return output


mlflow.models.set_model(MMGuardPyfunc())
