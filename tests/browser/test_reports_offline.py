"""The project's HTML reports open from file:// in a real headless Chromium with the network shut
(tests/browser/chromium.py) and render: validate's Data Docs with their styles, icons and working
table search, in light and dark colour schemes, and the drift stage's Evidently report. The same
run's site as GX writes it (before pipeline/offline_html.py) is loaded too, and must fail those
checks, so they can tell a broken page from a working one.

Slow tier (`make test-slow`, which runs `make browser` first): 57-90 s on 2 shared cores, most of
it the drift stage and imports; the browser's own part takes seconds."""
from __future__ import annotations

import re

import pandas as pd
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from pipeline.expectations import add_derived_columns
from pipeline.params import Params, parse_params
from pipeline.paths import Paths
from pipeline.stages import drift, validate
from tests.browser.chromium import load, offline_chromium
from tests.data.manifest_fixture import build_manifest
from tests.data.synthetic_sides import save_tiny_model

pytestmark = pytest.mark.slow

# Bootstrap 4's table cell border (#dee2e6); an unstyled cell has none.
BOOTSTRAP_CELL_BORDER = ("1px", "rgb(222, 226, 230)")
RENDERED = """
const cell = document.querySelector('table td');
const cellStyle = cell ? getComputedStyle(cell) : null;
const icon = document.querySelector('i.fas, i.fa');
const brand = document.querySelector('.navbar-brand a');
return {
  tables: document.querySelectorAll('table[data-toggle="table"]').length,
  bootstrapTables: document.querySelectorAll('.bootstrap-table').length,
  searchBoxes: document.querySelectorAll('.bootstrap-table input.search-input').length,
  cellBorder: cellStyle ? [cellStyle.borderTopWidth, cellStyle.borderTopColor] : null,
  bodyFont: getComputedStyle(document.body).fontFamily,
  iconGlyph: icon ? getComputedStyle(icon, '::before').content : null,
  brandBackground: brand ? getComputedStyle(brand).backgroundImage : null,
};
"""


@pytest.fixture(scope="module")
def browser():
    with offline_chromium() as driver:
        yield driver


@pytest.fixture(scope="module")
def data_docs(tmp_path_factory):
    """(the stage's site, the same suite's site as GX writes it)."""
    paths = Paths(tmp_path_factory.mktemp("validate"))
    build_manifest(paths)
    validate.run(Params(), paths)
    frame = add_derived_columns(pd.read_parquet(paths.manifest), Params(), paths.root)
    raw = paths.root / "gx_as_written"
    validate.run_suite(frame, Params(), raw)
    return paths.validate_dir / "data_docs", raw


def _validation_page(site):
    [page] = site.glob("validations/**/*.html")
    return page


def _visible_rows(wrapper) -> list[str]:
    return [row.text for row in wrapper.find_elements(By.CSS_SELECTOR, "tbody tr")
            if "no-records-found" not in (row.get_attribute("class") or "")]


def _word_in_one_row(rows: list[str]) -> str:
    words = [set(re.findall(r"[a-z_]{4,}", row.lower())) for row in rows]
    for index, own in enumerate(words):
        others = set().union(*(w for i, w in enumerate(words) if i != index))
        if own - others:
            return sorted(own - others)[0]
    raise AssertionError(f"no word tells one row apart: {rows}")


def test_data_docs_render_offline_with_styles_icons_and_table_search(browser, data_docs):
    site, _ = data_docs
    icons = 0
    for page in (site / "index.html", site / "expectations" / "manifest.html",
                 _validation_page(site)):
        record = load(browser, page.as_uri())
        assert record.left_the_machine == [] and record.failed == [], (page, record)
        assert record.console_errors == [], page
        shown = browser.execute_script(RENDERED)
        assert shown["bootstrapTables"] >= shown["tables"] > 0, (page, shown)
        assert tuple(shown["cellBorder"]) == BOOTSTRAP_CELL_BORDER, (page, shown)
        assert shown["bodyFont"].startswith("-apple-system"), (page, shown)  # bootstrap's
        if shown["iconGlyph"] is not None:  # font-awesome's stylesheet gives icons a glyph
            assert shown["iconGlyph"] not in ("none", "normal"), (page, shown)
            icons += 1
    assert icons >= 2

    # The validation page's tables have a search box; typing filters the rows.
    load(browser, _validation_page(site).as_uri())
    searchable = [w for w in browser.find_elements(By.CSS_SELECTOR, ".bootstrap-table")
                  if w.find_elements(By.CSS_SELECTOR, "input.search-input")]
    assert len(searchable) >= 10  # one per column's expectations
    wrapper = max(searchable, key=lambda w: len(_visible_rows(w)))
    rows = _visible_rows(wrapper)
    assert len(rows) >= 3
    word = _word_in_one_row(rows)
    wrapper.find_element(By.CSS_SELECTOR, "input.search-input").send_keys(word)
    WebDriverWait(browser, 10).until(lambda _: len(_visible_rows(wrapper)) == 1)
    assert word in _visible_rows(wrapper)[0].lower()


def test_data_docs_in_the_dark_colour_scheme_stay_offline(browser, data_docs):
    site, _ = data_docs
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {
        "features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    try:
        record = load(browser, (site / "index.html").as_uri())
        shown = browser.execute_script(RENDERED)
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
    assert record.left_the_machine == [] and record.failed == [], record
    assert shown["brandBackground"].startswith('url("file://'), shown  # GX's dark-mode logo


def test_the_site_as_gx_writes_it_fails_the_same_checks(browser, data_docs):
    _, raw = data_docs
    record = load(browser, _validation_page(raw).as_uri())
    shown = browser.execute_script(RENDERED)
    assert any("bootstrap" in url for url in record.left_the_machine)
    assert {error for _, error in record.failed} >= {"net::ERR_PROXY_CONNECTION_FAILED"}
    assert shown["bootstrapTables"] == 0 and shown["searchBoxes"] == 0
    assert tuple(shown["cellBorder"]) != BOOTSTRAP_CELL_BORDER


def test_the_evidently_drift_report_renders_offline(browser, tmp_path):
    paths = Paths(tmp_path)
    build_manifest(paths, rows_per_split={"train": 40, "val": 4, "test": 40})
    save_tiny_model(paths.root)  # the stage's monitored model when there is no champion
    params = parse_params({"drift": {"log_to_mlflow": False}})
    drift.run(params, paths)
    report = paths.drift_dir / "report.html"

    def rendered(driver):
        WebDriverWait(driver, 30).until(
            lambda d: "Dataset Drift" in d.execute_script("return document.body.innerText"))

    record = load(browser, report.as_uri(), settle=rendered)
    assert record.requests and record.left_the_machine == [] and record.failed == [], record
    assert record.console_errors == []
    assert browser.execute_script("return document.querySelectorAll('svg').length") > 0
