"""Serving that follows a registry alias: when @champion moves (a promotion, a rollback, a
manual move), the served process swaps the new version in without a restart.

- What to follow travels in the logged model's config (`serving.model_config(params)`, written
  at register): the registered model's name, the alias, how often to look, the look-up timeout
  and the shadow alias. The registry is the one the process loaded the model from: MLflow's
  registry URI when the pyfunc loads (MLFLOW_REGISTRY_URI / MLFLOW_TRACKING_URI for `mlflow
  models serve`, the project's store for `mmguard predict`). It is never written into the
  model: a version moves between registries, and credentials stay in the environment.
- A `Slot` holds the current `ServedModel` of one alias. A request reads `slot.current` once and
  scores with that object to the end, so a swap (one reference assignment) never changes the
  model under a request in flight, and no request waits for a load.
- The `Follower` thread looks the aliases up (one short try each, `registry_timeout_s`), and
  when one names another version it downloads that version's weights and loads them off the
  request path. A failed look-up or load is logged with its reason and the old model stays.
  The thread holds the follower weakly: when nothing holds the pyfunc any more (a caller that
  loaded it only to read its weights), the thread ends at its next tick.

Only the weights swap: the code and the request limits stay those of the process (the loaded
version's); a version of another task (other class names) is refused.
"""
from __future__ import annotations

import logging
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass

from pipeline import operating_points
from pipeline.monitoring import capture

log = logging.getLogger(__name__)
DEFAULT_TIMEOUT_S = 5


@dataclass(frozen=True)
class ServedModel:
    """A loaded model and the registry version it is (version None: not known)."""
    model: object  # pipeline.model.MMGuardModel, in eval mode
    name: str | None
    version: str | None
    run_id: str | None
    # the version's own temperature and threshold (its `operating.*` tags; at load, its model
    # config): they swap with the weights, since each was fitted for them
    operating: operating_points.Served | None = None

    @property
    def identity(self) -> dict:
        return {"name": self.name, "version": self.version, "run_id": self.run_id}


@dataclass(frozen=True)
class FollowSettings:
    """The `follow` section of the model config (None there: the loaded version only)."""
    model_name: str
    alias: str | None
    refresh_seconds: float
    registry_timeout_s: int = DEFAULT_TIMEOUT_S
    shadow: str | None = None
    shadow_max_pending: int = 64

    @classmethod
    def from_config(cls, config: dict | None) -> FollowSettings | None:
        if not config or not config.get("model_name"):
            return None
        return cls(**config)

    def as_config(self) -> dict:
        return {"model_name": self.model_name, "alias": self.alias,
                "refresh_seconds": self.refresh_seconds,
                "registry_timeout_s": self.registry_timeout_s, "shadow": self.shadow,
                "shadow_max_pending": self.shadow_max_pending}


class Slot:
    """The current model of one alias, replaced whole by one assignment."""

    def __init__(self, alias: str | None, current: ServedModel | None = None):
        self.alias = alias
        self.current = current
        self.failed: str | None = None  # the version whose last load failed, to log it once


class LoadFailed(RuntimeError):
    """A version could not be made ready to serve; the message says why."""


def load_version(registry_uri: str, name: str, version: str, device: str,
                 class_names: tuple[str, ...]) -> ServedModel:
    """Download version `version`'s weights from the registry and load them, ready to share
    between threads (eval mode, no grad)."""
    import mlflow
    from mlflow import MlflowClient

    from pipeline.model import load_model

    client = MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)
    found = client.get_model_version(name, version)
    # The version's own artifact location: a models:/ URI would be resolved in the process-wide
    # registry, which need not be the one this process follows.
    source = client.get_model_version_download_uri(name, version).rstrip("/")
    with tempfile.TemporaryDirectory(prefix="mmguard-swap-") as folder:
        try:
            local = mlflow.artifacts.download_artifacts(
                f"{source}/{_weights_path(source, registry_uri, folder)}", dst_path=folder,
                tracking_uri=registry_uri)
            model = load_model(local, device=device)
        except LoadFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure keeps the old model
            raise LoadFailed(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}") \
                from None
    if tuple(model.class_names) != tuple(class_names):
        raise LoadFailed(f"its classes {list(model.class_names)} are not the served model's "
                         f"{list(class_names)} (a model of another task)")
    model.eval().requires_grad_(False)  # as at load: threads share it, nothing switches modes
    return ServedModel(model, name, str(version), found.run_id,
                       operating_points.Served.from_tags(found.tags))


def _weights_path(source: str, registry_uri: str, folder: str) -> str:
    """Where the logged model keeps its `model_dir` artifact (its MLmodel says), so that only
    the weights are downloaded, not the code and environment files beside them."""
    import mlflow
    import yaml

    mlmodel = mlflow.artifacts.download_artifacts(f"{source}/MLmodel", dst_path=folder,
                                                  tracking_uri=registry_uri)
    with open(mlmodel) as handle:
        conf = yaml.safe_load(handle) or {}
    try:
        return conf["flavors"]["python_function"]["artifacts"]["model_dir"]["path"]
    except (KeyError, TypeError):
        raise LoadFailed("its MLmodel names no model_dir artifact (not an mmguard pyfunc)") \
            from None


class Follower:
    """Keeps slots on the versions their aliases name; `start()` runs it on a daemon thread."""

    def __init__(self, registry_uri: str, settings: FollowSettings, slots: list[Slot],
                 device: str, class_names: tuple[str, ...]):
        self.registry_uri = registry_uri
        self.settings = settings
        self.slots = [s for s in slots if s.alias]
        self.device = device
        self.class_names = tuple(class_names)
        self.first_pass = threading.Event()  # set once every slot has been looked at
        self.swaps = 0
        self._stop = threading.Event()

    def start(self) -> Follower:
        threading.Thread(target=_follow, args=(weakref.ref(self), self._stop,
                                               self.settings.refresh_seconds),
                         name="mmguard-follow", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def __del__(self):
        self._stop.set()

    def refresh(self) -> None:
        """Look every alias up once; swap in what moved."""
        try:
            for slot in self.slots:
                self._refresh(slot)
        finally:
            self.first_pass.set()

    def _target(self, alias: str) -> str | None:
        from mlflow import MlflowClient

        name, timeout = self.settings.model_name, self.settings.registry_timeout_s
        try:
            with capture.one_short_try(timeout):
                found = MlflowClient(tracking_uri=self.registry_uri,
                                     registry_uri=self.registry_uri) \
                    .get_model_version_by_alias(name, alias)
        except Exception as exc:  # noqa: BLE001 - the current model keeps serving
            log.warning("serving: could not look up %s@%s in %s (one try, %d s timeout: %s); "
                        "the current model keeps serving", name, alias, self.registry_uri,
                        timeout, str(exc).splitlines()[0][:200])
            return None
        return str(found.version)

    def _refresh(self, slot: Slot) -> None:
        target = self._target(slot.alias)
        current = slot.current
        if target is None or (current is not None and current.version == target):
            return
        name = self.settings.model_name
        was = current.version if current is not None else "none"
        started = time.monotonic()
        try:
            loaded = load_version(self.registry_uri, name, target, self.device, self.class_names)
        except Exception as exc:  # noqa: BLE001 - LoadFailed, or the registry went away
            again = slot.failed == target
            slot.failed = target
            (log.warning if again else log.error)(
                "serving: could not load %s version %s (@%s moved to it%s): %s; version %s "
                "keeps serving", name, target, slot.alias, ", again" if again else "", exc, was)
            return
        slot.current = loaded  # the swap: requests that started earlier keep their model
        slot.failed = None
        self.swaps += 1
        log.warning("serving: @%s of %s is version %s now; swapped in after %.1f s (was %s)",
                    slot.alias, name, target, time.monotonic() - started, was)


def _follow(ref, stop: threading.Event, refresh_seconds: float) -> None:
    """The follower thread: a pass at once, then one every refresh_seconds (0: no more)."""
    while True:
        follower = ref()
        if follower is None:
            return  # nothing serves through it any more
        try:
            follower.refresh()
        except Exception:  # noqa: BLE001 - the thread must outlive any one bad pass
            log.exception("serving: the alias follower's pass failed")
        del follower  # hold it only during a pass
        if refresh_seconds <= 0 or stop.wait(refresh_seconds):
            return
