"""The MLflow registry store: connection, aliases, and the lock that makes alias moves
compare-and-set.

MLflow has no atomic "move this alias only if it still points at X". The lock is a registered
model named `<model>.lock` (LOCK_SUFFIX): creating a registered model whose name exists fails in
every MLflow store (a unique key in the SQL stores, the same check behind an `mlflow server`),
so creating it is an atomic test-and-set, for SQLite files and tracking servers alike. Its tags
hold the owner and an expiry; a holder that died is broken after LOCK_TTL_S. Inside the lock an
operation re-reads the aliases it depends on, moves them, and reads them back to verify.
"""
from __future__ import annotations

import os
import random
import socket
import time
import uuid
from contextlib import contextmanager

import requests

from pipeline import tracking
from pipeline.params import Params

CHALLENGER, CHAMPION, PREVIOUS = "challenger", "champion", "previous_champion"
MAX_TAG_CHARS = 5000
LOCK_SUFFIX = ".lock"
# Longer than any critical section (a handful of registry calls), short enough that a crashed
# holder blocks the next promotion for minutes, not hours.
LOCK_TTL_S = 120.0
LOCK_WAIT_S = 60.0


class RegistryError(RuntimeError):
    """The registry cannot do what was asked (no challenger, nothing to roll back to, …)."""


class RegistryUnavailable(RegistryError):
    """The tracking server / registry store cannot be reached; nothing was changed."""


class RegistryBusy(RegistryError):
    """Another promote/rollback/register holds the registry lock for longer than we wait."""


def model_name(params: Params) -> str:
    return params.registry.model_name.format(task=params.task)


def ensure_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast with a clear message when an HTTP tracking server is down (MLflow's client
    would otherwise retry with back-off for minutes before failing)."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        response = requests.get(uri.rstrip("/") + "/health", timeout=timeout_s)
        response.raise_for_status()
    except requests.RequestException as exc:
        raise RegistryUnavailable(f"MLflow tracking server {uri} is unreachable ({exc}); "
                                  "the registry was not changed") from None


@contextmanager
def registry_errors(uri: str):
    """Turn connection failures inside MLflow calls into one clear RegistryUnavailable."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except requests.RequestException as exc:
        raise RegistryUnavailable(f"lost the MLflow tracking server {uri}: {exc}") from None
    except MlflowException as exc:
        text = str(exc)
        if any(s in text for s in ("Max retries", "Connection", "connection", "API request")):
            raise RegistryUnavailable(f"lost the MLflow tracking server {uri}: {text[:300]}") \
                from None
        raise


def client_for(params: Params, root):
    from mlflow import MlflowClient

    uri = tracking.tracking_uri(params, root)
    ensure_reachable(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def _missing(exc) -> bool:
    return exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or \
        "not found" in str(exc).lower()


def _or_none(call, *args):
    """call(*args), or None when what it reads does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return call(*args)
    except MlflowException as exc:
        if _missing(exc):
            return None
        raise


def alias_version(client, name: str, alias: str):
    """The ModelVersion an alias points at, or None when the alias (or model) does not exist."""
    return _or_none(client.get_model_version_by_alias, name, alias)


def version_or_none(client, name: str, version: str):
    return _or_none(client.get_model_version, name, version)


def alias_number(client, name: str, alias: str) -> str | None:
    version = alias_version(client, name, alias)
    return None if version is None else str(version.version)


def ensure_model(client, name: str) -> None:
    """Create the registered model when absent (a concurrent creator is not an error)."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _lock_tags(client, lock: str) -> dict | None:
    model = _or_none(client.get_registered_model, lock)
    return None if model is None else dict(model.tags)


def _busy(exc) -> bool:
    """Retry like a held lock: the lock exists; a concurrent writer holds the SQLite file; or
    (seen on `mlflow server`) creating the name right after its holder deleted it answered
    RESOURCE_DOES_NOT_EXIST."""
    return "database is locked" in str(exc) or exc.error_code in (
        "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST")


@contextmanager
def registry_lock(client, name: str, wait_s: float = LOCK_WAIT_S, ttl_s: float = LOCK_TTL_S):
    """Hold `<name>.lock` for the body: one alias-moving operation at a time per model."""
    from mlflow.exceptions import MlflowException

    lock = name + LOCK_SUFFIX
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.create_registered_model(
                lock, tags={"lock.owner": owner, "lock.expires": f"{time.time() + ttl_s:.3f}"},
                description=f"mmguard: held while aliases of {name} move; deleted when done")
            break
        except MlflowException as exc:
            if not _busy(exc):
                raise
        holder = _lock_tags(client, lock)
        if holder is not None and float(holder.get("lock.expires", 0)) < time.time():
            _release(client, lock, holder.get("lock.owner"))  # its holder died: break it
            continue
        if time.monotonic() > deadline:
            who = (holder or {}).get("lock.owner", "?")
            raise RegistryBusy(f"the registry lock {lock} is held by {who} for more than "
                               f"{wait_s:.0f}s; nothing was changed (it expires after "
                               f"{ttl_s:.0f}s if its holder died)")
        time.sleep(0.05 + random.random() * 0.2)  # jitter: waiters do not retry in lockstep
    try:
        yield owner
    finally:
        _release(client, lock, owner)


def _release(client, lock: str, owner: str | None) -> None:
    """Delete the lock if `owner` still holds it (not one that someone else took since)."""
    tags = _lock_tags(client, lock)
    if tags is not None and tags.get("lock.owner") == owner:
        _or_none(client.delete_registered_model, lock)  # gone already: fine


def set_alias_verified(client, name: str, alias: str, version: str) -> None:
    """Move an alias and read it back: a writer that bypasses the lock shows up as an error."""
    client.set_registered_model_alias(name, alias, version)
    now = alias_number(client, name, alias)
    if now != str(version):
        raise RegistryError(f"@{alias} of {name} reads {now} right after it was set to {version}:"
                            " another client moves aliases without the registry lock")
