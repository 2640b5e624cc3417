import json

import pytest

from pipeline.sources.jsonl_layout import read_layout, split_files


def _write(path, lines: list[bytes]):
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_every_line_becomes_one_record_and_bad_lines_carry_a_problem(tmp_path):
    good = json.dumps({"id": 7, "img": "img/07.png", "text": "hello", "label": 1}).encode()
    _write(tmp_path / "train.jsonl", [
        good,
        b'{"id": 8, "img": "img/08.png", "text": "cut off',         # malformed JSON
        b'{"id": 9, "text": "caf\xe9", "label": 0}',                # Latin-1 byte: not UTF-8
        b"[1, 2, 3]",                                                # not an object
        b'{"img": "img/10.png", "text": "no id", "label": 0}',      # no id
        b"",                                                         # blank lines are skipped
        json.dumps({"id": "11", "img": "", "text": None, "label": None}).encode(),
    ])
    _write(tmp_path / "dev_unseen.jsonl", [good])
    (tmp_path / "notes.jsonl").write_text('{"id": 1}\n')  # not a split file: ignored

    records = list(read_layout(tmp_path, "hateful_memes", "hateful_memes"))
    assert len(records) == 7
    first = records[0]
    assert (first.source_id, first.split, first.text, first.raw_label) == ("7", "val", "hello", 1)
    assert first.image_path == tmp_path / "img/07.png"
    train = [r for r in records if r.split == "train"]
    problems = [r.problem.split(":")[0] for r in train if r.problem]
    assert problems == ["malformed_json", "invalid_utf8", "malformed_json", "missing_id"]
    # A broken line still gets a stable id from its file and line number.
    assert train[1].source_id == "train.jsonl:2"
    last = train[-1]
    assert last.problem is None and last.image_path is None and last.text is None


def test_split_file_names_map_to_our_splits(tmp_path):
    for name in ["train", "dev_seen", "test_unseen", "validation", "other"]:
        (tmp_path / f"{name}.jsonl").write_text("")
    assert [split for _, split in split_files(tmp_path)] == ["val", "test", "train", "val"]


def test_a_folder_without_split_files_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no <split>.jsonl"):
        list(read_layout(tmp_path, "synthetic", "hateful_memes"))
