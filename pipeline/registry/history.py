"""The alias history: every move of @champion and @challenger, kept in the registry itself.

One registered-model tag per event on the model, `alias_history.<seq>` (seq zero-padded, so key
order is event order), whose value is the event as JSON: `{seq, at (UTC), who, alias, from, to,
action, why}`. Why tags on the model: they live where the aliases live (the same store, backup
and permissions, visible on the model's page in the MLflow UI); one tag per event keeps each
value small (a single tag holding a growing JSON list would hit the tag size limit and rewrite
the whole history on every move); and it needs no second registered model beside `<name>.lock`.

Appends happen inside the registry lock (store.registry_lock) that every alias move already
holds, so two operations never take the same sequence number. `move()` is the one way the
operations move a tracked alias: it reads the alias, moves it (verified), and appends the event
when the version changed.
"""
from __future__ import annotations

import getpass
import json
import os
import socket
from datetime import datetime, timezone

from pipeline.params import Params
from pipeline.registry.store import (
    CHALLENGER, CHAMPION, MAX_TAG_CHARS, RegistryError, _or_none, alias_number, client_for,
    model_name, registry_errors, registry_lock, set_alias_verified, version_or_none,
)

TAG_PREFIX = "alias_history."
TRACKED = (CHAMPION, CHALLENGER)
WHO_VARIABLE = "MMGUARD_WHO"  # e.g. the DAG's run id, for moves a scheduler makes


def actor(who: str | None = None) -> str:
    """Who moves an alias: the given name, else $MMGUARD_WHO, else user@host."""
    if who:
        return who
    if os.environ.get(WHO_VARIABLE):
        return os.environ[WHO_VARIABLE]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _events_of(tags: dict) -> list[dict]:
    events = []
    for key, value in tags.items():
        if not key.startswith(TAG_PREFIX):
            continue
        try:
            events.append(json.loads(value))
        except ValueError:
            events.append({"seq": int(key[len(TAG_PREFIX):]), "why": f"unreadable: {value!r}"})
    return sorted(events, key=lambda e: int(e["seq"]))


def append(client, name: str, alias: str, before: str | None, after: str | None, action: str,
           why: str = "", who: str | None = None) -> dict:
    """Record one move. Callers hold the registry lock (the sequence number is read, then
    written)."""
    tags = client.get_registered_model(name).tags
    seq = max((int(e["seq"]) for e in _events_of(tags)), default=0) + 1
    event = {"seq": seq, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "who": actor(who), "alias": alias, "from": before, "to": after,
             "action": action, "why": why}
    value = json.dumps(event)
    if len(value) > MAX_TAG_CHARS:  # cut the free text, keep the JSON whole
        event["why"] = why[:max(0, len(why) - (len(value) - MAX_TAG_CHARS) - 3)] + "..."
        value = json.dumps(event)
    client.set_registered_model_tag(name, f"{TAG_PREFIX}{seq:06d}", value)
    return event


def move(client, name: str, alias: str, version: str, action: str, why: str = "",
         who: str | None = None) -> str | None:
    """Point @alias at `version` (read back to verify) and record the move when it changed
    anything; the version it pointed at before (None: unset). Inside the registry lock."""
    before = alias_number(client, name, alias)
    set_alias_verified(client, name, alias, version)
    if before != str(version):
        append(client, name, alias, before, str(version), action, why, who)
    return before


def remove(client, name: str, alias: str, action: str, why: str = "",
           who: str | None = None) -> None:
    """Delete @alias and record it (to: null). Inside the registry lock."""
    before = alias_number(client, name, alias)
    if before is None:
        return
    client.delete_registered_model_alias(name, alias)
    append(client, name, alias, before, None, action, why, who)


def set_alias(params: Params, root, alias: str, version: str, why: str,
              who: str | None = None) -> dict:
    """A manual move (`mmguard alias set`): @alias to `version`, with the reason recorded.
    Moves only that alias: no gate, and @previous_champion (what rollback returns to) stays."""
    if alias not in TRACKED:
        raise RegistryError(f"alias {alias!r}: only {' and '.join(TRACKED)} are moved by hand")
    if not why.strip():
        raise RegistryError("--why must say why the alias moves (it is kept in the history)")
    client, uri = client_for(params, root)
    name = model_name(params)
    with registry_errors(uri), registry_lock(client, name):
        if version_or_none(client, name, str(version)) is None:
            raise RegistryError(f"{name} has no version {version}; nothing moved")
        before = move(client, name, alias, str(version), "manual", why.strip(), who)
    return {"model": name, "alias": alias, "from": before, "to": str(version),
            "moved": before != str(version)}


def read(params: Params, root, alias: str | None = None) -> list[dict]:
    """The recorded moves, oldest first (only those of `alias` when given)."""
    client, uri = client_for(params, root)
    name = model_name(params)
    with registry_errors(uri):
        model = _or_none(client.get_registered_model, name)
    events = _events_of(model.tags) if model is not None else []
    return [e for e in events if alias is None or e.get("alias") == alias]


def format_table(events: list[dict]) -> str:
    lines = [f"{'seq':>4}  {'at (UTC)':25s}  {'alias':10s}  {'from':>5} -> {'to':5}  "
             f"{'action':9s}  {'who':24s}  why"]
    for e in events:
        lines.append(f"{e.get('seq', '?'):>4}  {e.get('at', '?'):25s}  "
                     f"{e.get('alias', '?'):10s}  {str(e.get('from') or '-'):>5} -> "
                     f"{str(e.get('to') or '-'):5s}  {e.get('action', '?'):9s}  "
                     f"{e.get('who', '?'):24s}  {e.get('why', '')}")
    return "\n".join(lines)
