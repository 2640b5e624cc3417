"""validate stage: run the Great Expectations suite (pipeline/expectations.py) over the manifest.

Writes artifacts/validate/results.json (one entry per expectation), GX Data Docs under
artifacts/validate/data_docs/ (self-contained: pipeline/offline_html.py serves what GX's pages
load from CDNs from the site itself) and stats.json. Fails on any failed error-level expectation;
warning-level failures are reported and pass.

The GX context is ephemeral (in-memory stores): the suite is rebuilt from params on every run, so
nothing but the outputs needs to persist, and DVC owns those.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import great_expectations as gx
import pandas as pd
from great_expectations.checkpoint import UpdateDataDocsAction
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)

from pipeline import atomic, offline_html
from pipeline.errors import StageFailed
from pipeline.expectations import LEVELS, add_derived_columns, build_expectations
from pipeline.params import Params
from pipeline.paths import Paths

DOCS_SITE = "mmguard_validate"
# How many offending values / ids results.json keeps per expectation.
EXAMPLES_KEPT = 20


def run(params: Params, paths: Paths) -> dict:
    if not paths.manifest.exists():
        raise StageFailed(f"{paths.manifest} not found (run dedupe first)")
    manifest = pd.read_parquet(paths.manifest)
    frame = add_derived_columns(manifest, params, paths.root)

    out_dir = paths.validate_dir
    docs_dir = out_dir / "data_docs"
    out_dir.mkdir(parents=True, exist_ok=True)
    # The site is built in a staging folder that replaces the old one whole (no page of an
    # earlier run survives, a killed run leaves the old site), its CDN references pointed at
    # copies inside it so it renders offline.
    with atomic.directory(docs_dir) as staging:
        results = run_suite(frame, params, staging)
        offline_html.make_offline(staging)

    failed_errors = [r for r in results if not r["success"] and r["level"] == "error"]
    failed_warnings = [r for r in results if not r["success"] and r["level"] == "warning"]
    atomic.write_text(out_dir / "results.json", json.dumps(
        {"task": params.task, "rows": len(manifest), "success": not failed_errors,
         "expectations": results}, indent=2, default=str))
    summary = {
        "rows": len(manifest),
        "expectations": len(results),
        "failed_errors": [r["name"] for r in failed_errors],
        "failed_warnings": [r["name"] for r in failed_warnings],
        "rows_per_split": {str(k): int(v) for k, v in
                           manifest["split"].value_counts().sort_index().items()}
        if "split" in manifest.columns else {},
        "data_docs": (docs_dir / "index.html").relative_to(paths.artifacts).as_posix(),
    }
    atomic.write_text(paths.stats("validate"), json.dumps(summary, indent=2))
    if failed_errors:
        lines = [f"  {r['name']} ({_describe_column(r)}): {_describe_failure(r)}"
                 for r in failed_errors]
        raise StageFailed(f"{len(failed_errors)} error-level expectation(s) failed "
                          f"(see {out_dir / 'results.json'}):\n" + "\n".join(lines)
                          + f"\n  rows per split: {summary['rows_per_split']}")
    return summary


def run_suite(frame: pd.DataFrame, params: Params, docs_dir: Path) -> list[dict]:
    """Validate `frame` with the suite through a GX checkpoint that also builds Data Docs."""
    context = _ephemeral_context(docs_dir)
    asset = context.data_sources.add_pandas("manifest").add_dataframe_asset("manifest")
    batch = asset.add_batch_definition_whole_dataframe("whole_manifest")
    suite = context.suites.add(gx.ExpectationSuite(
        name="manifest", expectations=build_expectations(params)))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="manifest", data=batch, suite=suite))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name="validate",
        validation_definitions=[definition],
        actions=[UpdateDataDocsAction(name="update_data_docs", site_names=[DOCS_SITE])],
        # SUMMARY keeps a bounded sample of offending rows, named by id.
        result_format={"result_format": "SUMMARY", "unexpected_index_column_names": ["id"]}
        if "id" in frame.columns else {"result_format": "SUMMARY"},
    ))
    outcome = checkpoint.run(batch_parameters={"dataframe": frame})
    results = [_summarise(r) for run in outcome.run_results.values() for r in run.results]
    order = list(LEVELS)
    return sorted(results, key=lambda r: order.index(r["name"]))


def _ephemeral_context(docs_dir: Path):
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
        data_docs_sites={DOCS_SITE: {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(docs_dir.resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }},
    )
    return gx.get_context(project_config=config, mode="ephemeral")


def _summarise(result: Any) -> dict:
    config = result.expectation_config
    meta = config.meta or {}
    details = result.result or {}
    kwargs = config.kwargs
    column = kwargs.get("column") or (
        [kwargs["column_A"], kwargs["column_B"]] if "column_A" in kwargs else None)
    summary = {
        "name": meta.get("name", config.type),
        "expectation": config.type,
        "column": column,
        "level": meta.get("level", "error"),
        "success": bool(result.success),
        "observed_value": _plain(details.get("observed_value")),
        "unexpected_count": _plain(details.get("unexpected_count")),
        "unexpected_values": _plain(details.get("partial_unexpected_list", [])[:EXAMPLES_KEPT]),
        "unexpected_ids": [row.get("id") for row in
                           details.get("partial_unexpected_index_list", [])[:EXAMPLES_KEPT]
                           if isinstance(row, dict)],
        "details": _plain(details.get("details")),
        "exception": _exception_message(result.exception_info),
    }
    return summary


def _exception_message(info: Any) -> str | None:
    """GX nests exception info per metric; keep the first message found."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return info.get("exception_message")
    for value in info.values():
        message = _exception_message(value)
        if message:
            return message
    return None


def _plain(value: Any) -> Any:
    """numpy scalars and tuples into JSON-able Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def _describe_column(result: dict) -> str:
    column = result["column"]
    if isinstance(column, list):
        return " vs ".join(column)
    return column or "table"


def _describe_failure(result: dict) -> str:
    if result["exception"]:
        return result["exception"]
    mismatched = (result["details"] or {}).get("mismatched")
    if isinstance(mismatched, dict):  # the table's column set: only what is missing matters
        return f"missing columns {mismatched.get('missing', [])}"
    parts = []
    if result["unexpected_count"]:
        parts.append(f"{result['unexpected_count']} unexpected")
        if result["unexpected_values"]:
            parts.append(f"e.g. {result['unexpected_values'][:3]}")
        if result["unexpected_ids"]:
            parts.append(f"ids {result['unexpected_ids'][:3]}")
    if result["observed_value"] is not None:
        parts.append(f"observed {result['observed_value']}")
    if result["details"]:
        parts.append(f"details {result['details']}")
    return ", ".join(parts) or "failed"
