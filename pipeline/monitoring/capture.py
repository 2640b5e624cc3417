"""The capture log: every row the served pyfunc scores, appended as partitioned parquet.

The pyfunc (pipeline/serving.py) calls `record()` once per scored batch; `mmguard predict` goes
through the same pyfunc, so both are captured. Per row: UTC time, model name / version / run,
sha256 of the image bytes as received, a small JPEG thumbnail (`monitoring.thumbnail_side`, kept
at least twice the model's input size so the thumbnail embeds like the original), the image's
scalar drift features, the text, the predicted class, its probability and all probabilities.
The version is the one that scored the row (the served model swaps versions when its alias moves,
pipeline/hot_swap.py). `role` is `served` for the answer the client got and `shadow` for the
shadow alias's answer to the same row (pipeline/monitoring/shadow.py), which carries the served
row's `score_id`; readers of traffic (`read_log`) see the served rows unless they ask for both.

Layout: `<log_uri>/date=YYYY-MM-DD/part-<HHMMSS>-<pid>-<n>.parquet`, where log_uri is a local
folder or an s3:// URI (pyarrow's filesystems; S3 endpoint and keys from the usual AWS_*
variables). MMGUARD_MONITORING_URI overrides `monitoring.log_uri`; MMGUARD_CAPTURE=0 turns
capture off.

Speed: `record()` only appends references to an in-memory buffer; hashing, thumbnails, features
and the parquet write happen on one background thread, in part files of `flush_rows` rows or
every `flush_seconds`. The log is capped at `max_bytes`: after each write the oldest part files
are deleted (rotation). If the writer falls behind by more than `max_buffer_rows`, new rows are
dropped and counted (`dropped`), never blocking a request; the next write logs that count and
records it beside the parts (`date=D/dropped-<time>-<session>.json`), and `mmguard drift --since`
reports the rows dropped in its window (`dropped_rows`).
"""
from __future__ import annotations

import atexit
import base64
import binascii
import hashlib
import io
import json
import logging
import os
import re
import threading
import time
from collections import deque
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
from PIL import Image

from pipeline import drift_features
from pipeline.errors import StageFailed
from pipeline.params import MonitoringParams, Params, ParamsError, load_params

ENV_URI = "MMGUARD_MONITORING_URI"
ENV_SWITCH = "MMGUARD_CAPTURE"
THUMBNAIL_QUALITY = 85
SERVED, SHADOW = "served", "shadow"  # the `role` of a captured row
DROPPED_PREFIX = "dropped-"  # the writer's records of rows it had to drop, beside the parts
log = logging.getLogger(__name__)


# ---------------------------------------------------------------- where the log lives

def log_location(settings: MonitoringParams, root: Path | str = ".") -> str:
    uri = os.environ.get(ENV_URI) or settings.log_uri
    if "://" in uri:
        return uri
    return str((Path(root) / uri).resolve())


def _filesystem(uri: str):
    from pyarrow import fs

    if "://" not in uri:
        Path(uri).mkdir(parents=True, exist_ok=True)
        return fs.LocalFileSystem(), uri
    if uri.startswith("s3://"):
        # The stack's S3 gateway is named the way MLflow's artifact store names it.
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
        return fs.S3FileSystem(endpoint_override=endpoint), uri[len("s3://"):].rstrip("/")
    return fs.FileSystem.from_uri(uri)


# ---------------------------------------------------------------- writing

def _image_bytes(value: object) -> bytes | None:
    """The image as received (raw bytes, a readable path, or base64), for its sha256."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and value:
        if len(value) < 4096 and os.path.isfile(value):
            return Path(value).read_bytes()
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return None
    return None


def _thumbnail(image: Image.Image, side: int) -> bytes:
    thumb = image.copy()
    thumb.thumbnail((side, side))
    buffer = io.BytesIO()
    thumb.convert("RGB").save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
    return buffer.getvalue()


class CaptureLog:
    """A buffered, background-flushed writer of captured rows (one per process)."""

    def __init__(self, settings: MonitoringParams, uri: str, identity: dict | None = None):
        self.settings = settings
        self.uri = uri
        self.identity = identity or {}
        self.pending: deque = deque()
        self.pending_rows = 0
        self.dropped = 0
        self.dropped_saved = 0  # of `dropped`, how many a dropped-*.json file already records
        self.session = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}-{os.getpid()}"
        self.written = 0
        self.parts = 0
        self._wake = threading.Condition()
        self._io = threading.Lock()  # one writer at a time: the thread or an explicit flush()
        self._thread: threading.Thread | None = None
        self._stopped = False

    # request path: O(1) per batch
    def record(self, inputs: list, images: list, texts: list, output: pd.DataFrame,
               identity: dict | None = None, role: str = SERVED,
               request_id: str | None = None) -> None:
        """`identity` (name, version, run_id) of the model that scored this batch, as the
        caller resolved it (None: the log's own); `request_id` makes each row's score_id."""
        with self._wake:
            if self.pending_rows + len(images) > self.settings.max_buffer_rows:
                self.dropped += len(images)
                return
            self.pending.append((time.time(), inputs, images, texts, output, identity, role,
                                 request_id))
            self.pending_rows += len(images)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mmguard-capture",
                                                daemon=True)
                self._thread.start()
                atexit.register(self.close)
            if self.pending_rows >= self.settings.flush_rows:
                self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                if not self.pending and self._stopped:
                    return
                self._wake.wait(timeout=self.settings.flush_seconds)
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - monitoring must never take serving down
                log.exception("capture flush failed; rows kept for the next try")

    def _take(self) -> list:
        with self._wake:
            batches = list(self.pending)
            self.pending.clear()
            self.pending_rows = 0
        return batches

    def flush(self) -> int:
        """Write everything buffered as one part file now; the number of rows written."""
        with self._io:
            self._save_dropped()
            batches = self._take()
            if not batches:
                return 0
            try:
                frame = self._frame(batches)
                self._write(frame)
            except Exception:
                with self._wake:  # keep them for the next try rather than lose them
                    self.pending.extendleft(reversed(batches))
                    self.pending_rows += sum(len(b[2]) for b in batches)
                raise
            self.written += len(frame)
            return len(frame)

    def close(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self.flush()

    def _frame(self, batches: list) -> pd.DataFrame:
        side = self.settings.thumbnail_side
        rows = []
        for stamp, inputs, images, texts, output, given, role, request_id in batches:
            identity = given if given is not None else self._identity()
            probs = output[[c for c in output.columns if c.startswith("prob_")]]
            names = [c[len("prob_"):] for c in probs.columns]
            for k, (raw, image, text) in enumerate(zip(inputs, images, texts)):
                data = _image_bytes(raw)
                rows.append({
                    "time": pd.Timestamp(stamp, unit="s", tz="UTC"),
                    "model_name": identity.get("name"), "model_version": identity.get("version"),
                    "model_run_id": identity.get("run_id"), "role": role,
                    "score_id": f"{request_id}:{k}" if request_id else None,
                    "image_sha256": hashlib.sha256(data).hexdigest() if data else None,
                    "thumbnail": _thumbnail(image, side), "text": text,
                    **drift_features.image_stats(image),
                    "prediction": str(output["label"].iloc[k]),
                    "confidence": float(probs.iloc[k].max()),
                    "probabilities": json.dumps(dict(zip(names, map(float, probs.iloc[k])))),
                })
        return pd.DataFrame(rows)

    def _identity(self) -> dict:
        return self.identity() if callable(self.identity) else self.identity

    def _write(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        filesystem, base = _filesystem(self.uri)
        now = datetime.now(timezone.utc)
        folder = f"{base}/date={now:%Y-%m-%d}"
        filesystem.create_dir(folder, recursive=True)
        self.parts += 1
        name = f"{folder}/part-{now:%H%M%S%f}-{os.getpid()}-{self.parts}.parquet"
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), name,
                       filesystem=filesystem)
        self._rotate(filesystem, base)

    def _rotate(self, filesystem, base: str) -> None:
        """Delete the oldest part files until the log fits in max_bytes."""
        from pyarrow import fs

        files = [f for f in filesystem.get_file_info(fs.FileSelector(base, recursive=True))
                 if f.type == fs.FileType.File and f.path.endswith(".parquet")]
        # date=… folders, then part-<time> names: path order is age order
        files.sort(key=lambda f: f.path)
        total = sum(f.size for f in files)
        for old in files[:-1]:  # never the part just written
            if total <= self.settings.max_bytes:
                break
            filesystem.delete_file(old.path)
            total -= old.size

    def _save_dropped(self) -> None:
        """Log and persist the rows dropped since the last call, beside the parts:
        `date=D/dropped-<HHMMSSffffff>-<session>.json` = {time, dropped, session,
        session_dropped}, so `mmguard drift --since` can sum them over its window (`dropped_rows`).
        Rotation never deletes these (a few hundred bytes each, only when rows were dropped)."""
        with self._wake:
            new = self.dropped - self.dropped_saved
        if new <= 0:
            return
        log.warning("capture: %d rows dropped (the writer was more than max_buffer_rows=%d rows "
                    "behind); %d dropped by this writer so far", new,
                    self.settings.max_buffer_rows, self.dropped_saved + new)
        filesystem, base = _filesystem(self.uri)
        now = datetime.now(timezone.utc)
        folder = f"{base}/date={now:%Y-%m-%d}"
        filesystem.create_dir(folder, recursive=True)
        record = {"time": now.isoformat(), "dropped": new, "session": self.session,
                  "session_dropped": self.dropped_saved + new}
        with filesystem.open_output_stream(
                f"{folder}/{DROPPED_PREFIX}{now:%H%M%S%f}-{self.session}.json") as out:
            out.write(json.dumps(record).encode())
        self.dropped_saved += new  # only once written: a failed write is retried next flush


# ---------------------------------------------------------------- the serving hook

_LOG: CaptureLog | None = None
_LOG_LOCK = threading.Lock()


def _settings() -> MonitoringParams:
    """params.yaml of the working directory (the project root) when there is one."""
    try:
        return load_params("params.yaml").monitoring
    except ParamsError:
        return MonitoringParams()


def _model_identity(context, registry_uri: str | None = None, timeout_s: int = 5) -> dict:
    """Name, version and run of the served model, from its MLmodel file and the registry;
    MMGUARD_MODEL_NAME / MMGUARD_MODEL_VERSION override. Resolved once, off the request path."""
    import yaml

    identity = {"name": os.environ.get("MMGUARD_MODEL_NAME"),
                "version": os.environ.get("MMGUARD_MODEL_VERSION"), "run_id": None}
    model_id = None
    folder = Path(context.artifacts["model_dir"]).resolve() if context is not None else None
    for parent in folder.parents if folder is not None else ():
        if (parent / "MLmodel").is_file():
            meta = yaml.safe_load((parent / "MLmodel").read_text()) or {}
            identity["run_id"], model_id = meta.get("run_id"), meta.get("model_id")
            break
    if identity["run_id"] and not identity["version"]:
        found = registry_version(identity["run_id"], model_id, registry_uri, timeout_s)
        if found is not None:
            identity.update(name=found[0], version=found[1])
    return identity


# MLflow's HTTP client reads these on every call: 120 s a try and 7 retries with back-off by
# default, minutes in all against a server that is down.
HTTP_TIMEOUT_VARIABLE = "MLFLOW_HTTP_REQUEST_TIMEOUT"
HTTP_RETRIES_VARIABLE = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
_HTTP_SETTINGS_LOCK = threading.Lock()


@contextmanager
def one_short_try(timeout_s: int):
    """MLflow HTTP calls inside the block make one try of at most `timeout_s` seconds; the
    variables are put back as they were after it. The lock keeps two blocks from restoring each
    other's values; another thread's MLflow call during the block gets the short try too, which
    is why blocks hold only a single look-up."""
    wanted = {HTTP_TIMEOUT_VARIABLE: str(int(timeout_s)), HTTP_RETRIES_VARIABLE: "0"}
    with _HTTP_SETTINGS_LOCK:
        saved = {key: os.environ.get(key) for key in wanted}
        os.environ.update(wanted)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def registry_version(run_id: str, model_id: str | None, registry_uri: str | None,
                     timeout_s: int) -> tuple[str, str] | None:
    """(name, version) of the registered version logged from run `run_id` (and model
    `model_id`), or None when there is none or the registry does not answer in one try of
    `timeout_s` seconds; that case is logged and the rows keep model_version null."""
    from mlflow import MlflowClient

    try:
        with one_short_try(timeout_s):
            versions = MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri) \
                .search_model_versions(f"run_id='{run_id}'")
    except Exception as exc:  # noqa: BLE001 - the run id still identifies the model
        log.warning("capture: the model version of run %s could not be resolved from the "
                    "registry %s (one try, %d s timeout: %s); captured rows keep model_version "
                    "null", run_id, registry_uri, timeout_s, str(exc).splitlines()[0][:200])
        return None
    for version in versions:
        if model_id is None or model_id in (version.source or ""):
            return version.name, str(version.version)
    return None


_PAUSED = threading.Event()


@contextmanager
def paused():
    """Scoring inside this block is not traffic (the promotion gate scoring the test set)."""
    _PAUSED.set()
    try:
        yield
    finally:
        _PAUSED.clear()


def active() -> bool:
    """Whether scoring now is captured (the shadow scorer skips its work when it is not)."""
    return os.environ.get(ENV_SWITCH, "1") != "0" and not _PAUSED.is_set()


def record(context, model_input: pd.DataFrame, images: list, texts: list,
           output: pd.DataFrame, scored_by: dict | None = None, role: str = SERVED,
           request_id: str | None = None) -> None:
    """The pyfunc's one call: queue a scored batch for the capture log (no-op when off).
    `scored_by`: name, version and run of the model that scored it; `role`: served or shadow;
    `request_id`: the scored batch, shared by its served and shadow rows."""
    global _LOG
    if not active() or not images:
        return
    if _LOG is None:
        with _LOG_LOCK:
            if _LOG is None:
                import mlflow  # already loaded: the pyfunc calling us is MLflow's

                settings = _settings()
                if not settings.capture:
                    return
                resolved: dict = {}
                # The store this process scores from, read now: the writer thread may resolve
                # the version after `tracking.store` has put the process-wide URIs back.
                registry_uri = mlflow.get_registry_uri()

                def identity() -> dict:  # called by the writer thread
                    if not resolved:
                        resolved.update(_model_identity(context, registry_uri,
                                                        settings.registry_timeout_s))
                    return resolved

                _LOG = CaptureLog(settings, log_location(settings), identity)
    _LOG.record(model_input["image"].tolist(), images, texts, output, scored_by, role,
                request_id)


def flush() -> int:
    """Write whatever the process has buffered (tests, and before a drift check in-process)."""
    return _LOG.flush() if _LOG is not None else 0


# ---------------------------------------------------------------- reading it back

SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(since: str) -> timedelta:
    match = SINCE.match(since)
    if not match:
        raise StageFailed(f"--since {since!r}: expected a number and a unit (s, m, h, d, w), "
                          "e.g. 24h")
    return timedelta(seconds=float(match.group(1)) * UNIT_SECONDS[match.group(2)])


def read_log(uri: str, cutoff: datetime, columns: list[str] | None = None,
             roles: tuple[str, ...] | None = (SERVED,)) -> pd.DataFrame:
    """Captured rows at or after `cutoff`, oldest first (empty when there are none). Only the
    rows of `roles` (default: what clients were answered; None: every row); parts written
    before rows had a role hold served rows only. A column a part lacks reads as null."""
    import pyarrow.parquet as pq
    from pyarrow import fs

    filesystem, base = _filesystem(uri)
    if filesystem.get_file_info(base).type == fs.FileType.NotFound:
        return pd.DataFrame()
    first_day = f"date={cutoff:%Y-%m-%d}"
    files = sorted(f.path for f in filesystem.get_file_info(fs.FileSelector(base, recursive=True))
                   if f.type == fs.FileType.File and f.path.endswith(".parquet")
                   and Path(f.path).parent.name >= first_day)
    if not files:
        return pd.DataFrame()
    wanted = None if columns is None else sorted({"time", "role", *columns})

    def read(path: str) -> pd.DataFrame:
        present = pq.read_schema(path, filesystem=filesystem).names
        return pq.read_table(path, filesystem=filesystem, columns=None if wanted is None else
                             [c for c in wanted if c in present]).to_pandas()

    frame = pd.concat([read(f) for f in files], ignore_index=True)
    frame = frame.reindex(columns=list(dict.fromkeys([*frame.columns, *(wanted or ["role"])])))
    frame["role"] = frame["role"].fillna(SERVED)
    frame = frame[frame["time"] >= pd.Timestamp(cutoff)]
    if roles is not None:
        frame = frame[frame["role"].isin(roles)]
    return frame.sort_values("time", kind="stable").reset_index(drop=True)


def dropped_rows(uri: str, cutoff: datetime) -> int:
    """Rows capture writers dropped at or after `cutoff` (their dropped-*.json records)."""
    from pyarrow import fs

    filesystem, base = _filesystem(uri)
    if filesystem.get_file_info(base).type == fs.FileType.NotFound:
        return 0
    first_day = f"date={cutoff:%Y-%m-%d}"
    total = 0
    for info in filesystem.get_file_info(fs.FileSelector(base, recursive=True)):
        name = Path(info.path)
        if (info.type != fs.FileType.File or not name.name.startswith(DROPPED_PREFIX)
                or name.suffix != ".json" or name.parent.name < first_day):
            continue
        with filesystem.open_input_stream(info.path) as stream:
            record = json.loads(stream.read())
        if datetime.fromisoformat(record["time"]) >= cutoff:
            total += int(record["dropped"])
    return total


def traffic_rows(params: Params, root: Path, since: str) -> int:
    """How many rows were captured in the last `since` (the drift monitor's "is there traffic")."""
    cutoff = datetime.now(timezone.utc) - parse_since(since)
    return len(read_log(log_location(params.monitoring, root), cutoff, columns=["time"]))
