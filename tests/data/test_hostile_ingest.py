"""The hostile corpus (tests/hostile/corpus.py) through ingest: every bad row kind of every source
format ends as exactly its quarantine reason, every good or unusual one is kept, nothing outside
a source folder is read. The whole chain of stages runs in `make test-hostile`."""
from __future__ import annotations

import pytest

from pipeline.paths import Paths
from pipeline.stages import ingest
from tests.hostile import corpus as hostile


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return hostile.build(tmp_path_factory.mktemp("hostile"))


def test_the_corpus_holds_at_least_25_kinds_of_bad_rows(corpus):
    bad = corpus.kinds()
    assert len(bad) >= 25, sorted(bad)
    formats = {task.sources for task in corpus.tasks.values()}
    assert set().union(*formats) == {"synthetic", "hateful_memes", "mmhs150k", "fakeddit",
                                     "coco"}


@pytest.mark.parametrize("task", ["hateful_memes", "moderation7"])
def test_each_row_gets_its_exact_fate_at_ingest(corpus, task):
    part = corpus.tasks[task]
    stats = ingest.run(hostile.params_for(task, part.sources), Paths(part.root))
    hostile.assert_ingest_fates(part, stats)
    hostile.assert_nothing_from_outside(corpus, part.root)


def test_the_parquet_import_writes_no_file_outside_img(corpus):
    folder = corpus.tasks["hateful_memes"].root / "data" / "hateful_memes"
    written = [p for p in folder.rglob("*") if p.is_file()]
    assert {p.parent for p in written} <= {folder, folder / "img"}
    assert not any(p.name == "evil" or p.name.startswith("evil.") for p in
                   folder.parents[2].rglob("evil*"))
