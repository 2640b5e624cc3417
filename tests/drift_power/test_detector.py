"""The drift detector measured: detection and false-alarm rates over synthetic seed pairs at 30,
100, 200, 1,000 and 5,000 rows a side, for the old fixed-threshold rule and the calibrated
verdict side by side. Its own tier (`make drift-power`, ~30 min on 2 busy cores): not collected
by `make test`.

A pair compares the clean items of one synthetic seed (reference) with those of another seed
(current), unshifted or with one shift knob turned, as the model sees them (the stage's
`features`, i.e. `pipeline.monitoring.embeddings.model_view`). Seeds are independent draws of
the generator, so an unshifted pair is a real "no drift" case, confounder sets and all.

- calibrated: the drift stage's own `compare` (Evidently's column tests and the permutation MMD
  tests, decided by `drift_verdict.verdict`, the one verdict function), with the shipped
  `drift` params; only the HTML/JSON files and their t-SNE pictures are left out;
- old: the rule this replaced, MMD (Evidently's MMDDriftMethod) > 0.01 on either modality, or
  half of the same 11 columns drifted by Evidently's default per-column tests.

Pairs (the cost is embedding and the two Evidently column reports, 2-8 s a pair here):
- 30, 100, 200 rows: 40 independent undrifted pairs (seed s against 1000 + s), so the 5% bound
  allows 2 false alarms in 40, and a detector firing on 15% of pairs would pass it with
  probability 4%; 10 pairs per shift against the first 10 references.
- 1,000 rows: every pair among seeds 0-7 (28 pairs, each seed on 7: not independent), 5 pairs
  per shift;
- 5,000 rows, the cheaper way: a side is five 1,000-row seeds together, so nothing new is
  embedded. Undrifted: 6 splits of seeds 0-9 into two groups of five (dependent pairs: a bound
  over them says little more than "no false alarm seen"); each shift: seeds 0-4 against the
  shifted seeds 1000-1004.

The model: `DRIFT_POWER_MODEL=tiny` (default: the random-init tiny config, fast on a CPU) or
`params` (params.yaml's model section, e.g. the pretrained towers; ~100x slower per item on this
CPU). A false-alarm rate is a property of the tests and the data, not of the model; detection
depends on what the model's embeddings separate. `DRIFT_POWER_JSON=path` also writes the table.
"""
from __future__ import annotations

import json
import os
import time
from functools import lru_cache
from itertools import combinations
from pathlib import Path
from statistics import mean

import pandas as pd
import pytest

from pipeline.params import load_params, parse_params
from pipeline.stages import drift
from tests.data.drift_pairs import OLD_DRIFT_SHARE, OLD_MMD_THRESHOLD, old_verdict, side_features
from tests.data.synthetic_sides import SHIFTS, TASK

SIZES = (30, 100, 200, 1000, 5000)
INDEPENDENT_PAIRS = {30: 40, 100: 40, 200: 40}
SHIFT_PAIRS = {30: 10, 100: 10, 200: 10, 1000: 5}
ROUND_ROBIN_SEEDS = 8  # at 1,000 rows
COMPOSED, PARTS = 5000, 5  # a 5,000-row side is five 1,000-row seeds
SPLITS = [tuple(range(i, i + PARTS)) for i in range(PARTS)] + [(0, 2, 4, 6, 8)]
SETTINGS = parse_params({}).drift  # the shipped defaults (checked against params.yaml below)
MAX_FALSE_ALARMS = 0.05
RESULTS: dict[int, dict[str, list[dict]]] = {}
SIDES: dict[tuple[int, int, str | None], pd.DataFrame] = {}
ROOT = Path(__file__).resolve().parents[2]


def _model_params():
    choice = os.environ.get("DRIFT_POWER_MODEL", "tiny")
    if choice == "params":
        return load_params(ROOT / "params.yaml").model
    if choice == "tiny":
        return parse_params({"model": {"name": "tiny", "pretrained": None}}).model
    raise ValueError(f"DRIFT_POWER_MODEL={choice!r}: expected tiny or params")


@lru_cache(maxsize=1)
def _model():
    from pipeline.model import build_from_model_params

    return build_from_model_params(_model_params(), TASK, seed=0)


def _side(seed: int, size: int, shift: str | None = None) -> pd.DataFrame:
    """A seed's features, kept: the composed 5,000-row sides reuse the 1,000-row ones."""
    key = (seed, size, shift)
    if key not in SIDES:
        SIDES[key] = side_features(_model(), seed, size, shift)
    return SIDES[key]


def _composed(seeds, shift: str | None = None) -> pd.DataFrame:
    """Five 1,000-row seeds as one side, ids made unique by their seed."""
    parts = [_side(seed, COMPOSED // PARTS, shift) for seed in seeds]
    return pd.concat([part.assign(id=f"{seed}:" + part["id"])
                      for seed, part in zip(seeds, parts)], ignore_index=True)


def _trial(reference: pd.DataFrame, current: pd.DataFrame) -> dict:
    new = drift.compare(reference, current, SETTINGS, None)
    return {"old": old_verdict(reference, current),
            "new": {"overall": new["dataset_drift"],
                    "embeddings": new["families"]["embeddings"]["drifted"],
                    "any column": bool(new["drifted_columns"])},
            "p": new["embedding_p_values"], "columns": new["drifted_columns"]}


def _cases(size: int) -> dict[str, list[dict]]:
    if size == COMPOSED:
        cases = {"unshifted": [_trial(_composed(split),
                                      _composed([s for s in range(2 * PARTS) if s not in split]))
                               for split in SPLITS]}
        reference, shifted = list(range(PARTS)), [1000 + s for s in range(PARTS)]
        for shift in SHIFTS:
            cases[shift] = [_trial(_composed(reference), _composed(shifted, shift))]
        return cases
    if size in INDEPENDENT_PAIRS:
        pairs = [(s, 1000 + s) for s in range(INDEPENDENT_PAIRS[size])]
    else:
        pairs = list(combinations(range(ROUND_ROBIN_SEEDS), 2))
    cases = {"unshifted": [_trial(_side(a, size), _side(b, size)) for a, b in pairs]}
    for shift in SHIFTS:
        cases[shift] = [_trial(_side(s, size), _side(1000 + s, size, shift))
                        for s in range(SHIFT_PAIRS[size])]
    return cases


def _measure(size: int) -> dict[str, list[dict]]:
    if size not in RESULTS:
        started = time.monotonic()
        RESULTS[size] = _cases(size)
        print(f"\n{size} rows a side: {time.monotonic() - started:.0f} s")
        for case, trials in RESULTS[size].items():
            print("  " + _row(case, trials))
    return RESULTS[size]


def _rate(trials: list[dict], rule: str, family: str = "overall") -> float:
    return sum(t[rule][family] for t in trials) / len(trials)


def _mean_p(trials: list[dict], modality: str) -> float:
    return mean(t["p"][modality] for t in trials)


def _row(case: str, trials: list[dict]) -> str:
    return (f"{case:18s} pairs {len(trials):3d}  old {_rate(trials, 'old'):5.0%} "
            f"(emb {_rate(trials, 'old', 'embeddings'):4.0%}, any col "
            f"{_rate(trials, 'old', 'any column'):4.0%})  calibrated "
            f"{_rate(trials, 'new'):5.0%} (emb {_rate(trials, 'new', 'embeddings'):4.0%}, any col "
            f"{_rate(trials, 'new', 'any column'):4.0%}; mean p image "
            f"{_mean_p(trials, 'image'):.3f} text {_mean_p(trials, 'text'):.3f})")


def test_the_measured_settings_are_the_shipped_ones():
    shipped = load_params(ROOT / "params.yaml").drift
    assert shipped == SETTINGS, "params.yaml's drift section differs from the measured defaults"


@pytest.mark.parametrize("size", SIZES)
def test_false_alarms_at_most_5_percent(size):
    unshifted = _measure(size)["unshifted"]
    assert _rate(unshifted, "new") <= MAX_FALSE_ALARMS, [t["p"] for t in unshifted]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("shift", list(SHIFTS))
def test_detection(size, shift):
    """A bound per case, from what each shift moves (README: the measured rates).
    - hashtag captions: new tokens and punctuation, seen by the text embeddings and two caption
      columns: caught at every size;
    - a new vocabulary: only the text embeddings see it: caught from 200 rows on; below, the
      text test must still lean towards it (lower mean p-value than on undrifted pairs);
    - novel shapes: the random-init image tower barely separates them: caught at 5,000 rows;
      below, the image test must lean towards it;
    - larger images: the size columns flag it at every size (Bonferroni-corrected), but two
      columns of 11 are below drift_share: the verdict comes from the image embeddings, which
      catch it at 5,000 rows.
    """
    cases = _measure(size)
    shifted, unshifted = cases[shift], cases["unshifted"]
    rate = _rate(shifted, "new")
    if shift == "hashtag_captions":
        assert rate >= 0.9
    elif shift == "novel_vocabulary":
        assert rate >= 0.8 if size >= 200 else \
            _mean_p(shifted, "text") < _mean_p(unshifted, "text")
    elif shift == "novel_shapes":
        assert rate == 1.0 if size == COMPOSED else \
            _mean_p(shifted, "image") < _mean_p(unshifted, "image")
    else:
        flagged = mean({"image_width", "image_height"} <= set(t["columns"]) for t in shifted)
        assert flagged >= 0.9
        if size == COMPOSED:
            assert rate == 1.0


def test_table():
    """The side-by-side table of every size (printed; also written to DRIFT_POWER_JSON)."""
    print(f"\nmodel {_model_params().name} (pretrained {_model_params().pretrained}); "
          f"calibrated: alpha {SETTINGS.alpha}, {SETTINGS.embeddings.permutations} "
          f"permutations; old: MMD > {OLD_MMD_THRESHOLD}, share >= {OLD_DRIFT_SHARE}")
    table = {}
    for size in SIZES:
        for case, trials in _measure(size).items():
            print(f"{size:5d}  " + _row(case, trials))
            table[f"{size}/{case}"] = {
                "pairs": len(trials),
                **{f"{rule} {family}": _rate(trials, rule, family) for rule in ("old", "new")
                   for family in ("overall", "embeddings", "any column")},
                **{f"mean p {m}": _mean_p(trials, m) for m in ("image", "text")}}
    if os.environ.get("DRIFT_POWER_JSON"):
        Path(os.environ["DRIFT_POWER_JSON"]).write_text(json.dumps(table, indent=2) + "\n")
    assert len(table) == len(SIZES) * (1 + len(SHIFTS))
