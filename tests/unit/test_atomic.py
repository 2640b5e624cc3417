"""Crash-safe writes: a writer that fails part-way leaves the previous output whole and no
temporary file behind; the model folder is a complete model or absent."""
from __future__ import annotations

import pytest

from pipeline import atomic


def _entries(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_failed_file_write_keeps_the_old_file(tmp_path):
    dest = tmp_path / "out" / "stats.json"
    atomic.write_json(dest, {"rows": 1})
    assert dest.read_text() == '{\n  "rows": 1\n}\n'

    def half_then_crash(path):
        path.write_text('{"rows": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.write_with(dest, half_then_crash)
    assert dest.read_text() == '{\n  "rows": 1\n}\n'
    assert _entries(dest.parent) == ["stats.json"]


def test_a_directory_is_replaced_whole_or_not_at_all(tmp_path):
    dest = tmp_path / "shards"
    with atomic.directory(dest) as staging:
        (staging / "a.tar").write_text("first")
    assert _entries(dest) == ["a.tar"]
    with pytest.raises(RuntimeError), atomic.directory(dest) as staging:
        (staging / "b.tar").write_text("second, never finished")
        raise RuntimeError("killed")
    assert _entries(dest) == ["a.tar"] and _entries(tmp_path) == ["shards"]
    with atomic.directory(dest) as staging:
        (staging / "c.tar").write_text("third")
    assert _entries(dest) == ["c.tar"] and _entries(tmp_path) == ["shards"]  # no stale file
    assert oct(dest.stat().st_mode & 0o777) == "0o755"


def test_a_crash_while_saving_a_model_leaves_the_previous_model(tmp_path, monkeypatch):
    from pipeline.model import io
    from pipeline.model.io import read_config, save_model
    from pipeline.params import parse_params
    from pipeline.model import build_model

    model = build_model(parse_params({"task": "hateful_memes"}))
    save_model(model, tmp_path / "model")
    before = {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()}

    def partial_weights(state, path, metadata=None):
        with open(path, "wb") as out:
            out.write(b"\0" * 100)  # a few bytes of weights, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "save_file", partial_weights)
    with pytest.raises(KeyboardInterrupt):
        save_model(model, tmp_path / "model")
    after = {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()}
    assert after == before and read_config(tmp_path / "model")["task"] == "hateful_memes"
    assert _entries(tmp_path) == ["model"]
