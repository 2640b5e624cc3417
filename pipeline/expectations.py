"""The Great Expectations suite over the clean manifest, apart from the validate stage's plumbing.

Row-level facts GX cannot compute from one column (does the image file exist, how many rows does
this row's split hold, ...) are added as derived columns by `add_derived_columns`; the suite then
checks them like any other column.

`LEVELS` is the one place that says which expectations stop the pipeline (`error`) and which are
only reported (`warning`). Each expectation carries its name and level in `meta` and the level as
GX's own `severity` (critical / warning), so Data Docs show the same thing results.json does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import great_expectations.expectations as gxe
import pandas as pd
from great_expectations.expectations.metadata_types import FailureSeverity

from pipeline import contracts, taxonomy
from pipeline.params import Params
from pipeline.paths import SPLITS

Level = Literal["error", "warning"]

REQUIRED_COLUMNS = tuple(contracts.MANIFEST.names)

# name -> level. Every expectation of the suite appears here exactly once.
LEVELS: dict[str, Level] = {
    "required_columns_present": "error",
    "id_not_null": "error",
    "id_unique": "error",
    "task_matches_params": "error",
    "split_in_set": "error",
    "every_split_present": "error",
    "label_in_range": "error",
    "label_name_in_taxonomy": "error",
    "label_name_matches_label": "error",
    "text_not_null": "error",
    "text_length_in_range": "error",
    "image_sha256_is_hex64": "error",
    "width_in_range": "error",
    "height_in_range": "error",
    "image_file_exists": "error",
    "valid_pair_is_bool": "error",
    "valid_pair_matches_label": "error",
    "split_min_rows": "error",
    "class_share_per_split": "warning",
    "every_class_present": "warning",
}

_SEVERITY = {"error": FailureSeverity.CRITICAL, "warning": FailureSeverity.WARNING}


def add_derived_columns(manifest: pd.DataFrame, params: Params, root: Path) -> pd.DataFrame:
    """The manifest plus the columns the suite checks that no single source column holds.

    Tolerates missing or malformed source columns (the derived value is then null), so that the
    suite itself reports the problem instead of this function crashing on it.
    """
    frame = manifest.copy()
    names = taxonomy.class_names(params.task)
    rows = len(frame)

    def column(name: str) -> pd.Series:
        return frame[name] if name in frame.columns else pd.Series([None] * rows, index=frame.index)

    labels = column("label").map(_as_label_index)
    frame["image_exists"] = column("image_path").map(lambda p: _is_file(root, p))
    frame["text_length"] = column("text").map(lambda t: len(t) if isinstance(t, str) else None)
    frame["expected_label_name"] = labels.map(
        lambda i: names[i] if i is not None and 0 <= i < len(names) else None)
    frame["expected_valid_pair"] = labels.map(
        lambda i: taxonomy.is_valid_pair(params.task, i) if i is not None else None)
    # Split-level facts, repeated on each row of the split, so one suite covers them.
    split = column("split").astype(object).where(column("split").notna(), "<null>")
    frame["split_row_count"] = split.map(split.value_counts())
    label_key = labels.map(lambda i: "<null>" if i is None else str(i))
    class_rows = pd.DataFrame({"split": split, "label": label_key}).groupby(
        ["split", "label"], sort=False)["split"].transform("size")
    frame["class_share_in_split"] = class_rows / frame["split_row_count"]
    return frame


def _as_label_index(value: object) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        return None
    if isinstance(value, (int, float)) and float(value).is_integer():
        return int(value)
    return None


def _is_file(root: Path, image_path: object) -> bool:
    if not isinstance(image_path, str) or not image_path:
        return False
    return (root / image_path).is_file()


def build_expectations(params: Params) -> list[gxe.Expectation]:
    """The suite's expectations for `params.task`, thresholds from `params.validate_`, each named
    and levelled in `meta`. The caller adds them to a suite inside its GX context."""
    limits = params.validate_
    class_count = taxonomy.num_classes(params.task)
    expectations = {
        "required_columns_present": gxe.ExpectTableColumnsToMatchSet(
            column_set=list(REQUIRED_COLUMNS), exact_match=False),
        "id_not_null": gxe.ExpectColumnValuesToNotBeNull(column="id"),
        "id_unique": gxe.ExpectColumnValuesToBeUnique(column="id"),
        "task_matches_params": gxe.ExpectColumnValuesToBeInSet(
            column="task", value_set=[params.task]),
        "split_in_set": gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        "every_split_present": gxe.ExpectColumnDistinctValuesToContainSet(
            column="split", value_set=list(SPLITS)),
        "label_in_range": gxe.ExpectColumnValuesToBeInSet(
            column="label", value_set=list(range(class_count))),
        "label_name_in_taxonomy": gxe.ExpectColumnValuesToBeInSet(
            column="label_name", value_set=list(taxonomy.class_names(params.task))),
        # Rows whose label has no name at all are left to label_in_range; this one catches
        # a valid label paired with the wrong name.
        "label_name_matches_label": gxe.ExpectColumnPairValuesToBeEqual(
            column_A="label_name", column_B="expected_label_name",
            ignore_row_if="either_value_is_missing"),
        "text_not_null": gxe.ExpectColumnValuesToNotBeNull(column="text"),
        "text_length_in_range": gxe.ExpectColumnValuesToBeBetween(
            column="text_length", min_value=1, max_value=limits.max_text_chars),
        "image_sha256_is_hex64": gxe.ExpectColumnValuesToMatchRegex(
            column="image_sha256", regex=r"^[0-9a-f]{64}$"),
        "width_in_range": gxe.ExpectColumnValuesToBeBetween(
            column="width", min_value=limits.min_image_side, max_value=limits.max_image_side),
        "height_in_range": gxe.ExpectColumnValuesToBeBetween(
            column="height", min_value=limits.min_image_side, max_value=limits.max_image_side),
        "image_file_exists": gxe.ExpectColumnValuesToBeInSet(
            column="image_exists", value_set=[True]),
        "valid_pair_is_bool": gxe.ExpectColumnValuesToBeOfType(column="valid_pair", type_="bool"),
        "valid_pair_matches_label": gxe.ExpectColumnPairValuesToBeEqual(
            column_A="valid_pair", column_B="expected_valid_pair",
            ignore_row_if="either_value_is_missing"),
        "split_min_rows": gxe.ExpectColumnMinToBeBetween(
            column="split_row_count", min_value=limits.min_rows_per_split),
        "class_share_per_split": gxe.ExpectColumnMaxToBeBetween(
            column="class_share_in_split", max_value=limits.max_class_share),
        "every_class_present": gxe.ExpectColumnDistinctValuesToContainSet(
            column="label", value_set=list(range(class_count))),
    }
    if set(expectations) != set(LEVELS):
        raise AssertionError(f"suite and LEVELS disagree: {set(expectations) ^ set(LEVELS)}")
    for expectation_name, expectation in expectations.items():
        level = LEVELS[expectation_name]
        expectation.meta = {"name": expectation_name, "level": level}
        expectation.severity = _SEVERITY[level]
    return list(expectations.values())
