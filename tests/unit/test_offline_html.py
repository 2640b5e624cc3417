"""Offline HTML reports (pipeline/offline_html.py): what counts as a network load, how a site's
CDN references become copies inside it, and the clear errors when it cannot serve one. Real
files from the asset store `make install` fills (the pinned npm tarballs)."""
from __future__ import annotations

import json
import shutil

import pytest

from pipeline import offline_html
from pipeline.errors import StageFailed

BOOTSTRAP_JS = "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js"
# The subresource integrity GX's template gives bootstrap.min.js: the CDN's bytes.
BOOTSTRAP_JS_SRI = "sha384-JjSmVgyd0p3pXB1rRibZUAYoIIy6OrQ6VrjIEaFf/nJGzIxFDsf4x0xIM+B07jRM"
FONTAWESOME = "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css"
GE_LOGO = "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/logo-long.png"


@pytest.fixture(scope="module")
def store():
    store = offline_html.default_store()
    assert offline_html.store_is_complete(store), "run `make install` to fetch the report assets"
    return store


def test_only_what_renders_a_page_counts_as_a_load():
    page = """<html><head>
      <link rel="stylesheet" href="https://cdn.example/a.css">
      <script src="https://cdn.example/b.js"></script>
      <script src="local.js"></script>
      <style>.x { background: url('https://cdn.example/c.png') } @import "https://cdn.example/d.css";</style>
    </head><body style="background: url(//cdn.example/e.png)">
      <img srcset="https://cdn.example/f.png 1x, small.png 2x">
      <a href="https://docs.example/guide">a link a reader may click</a>
      <script>var notALoad = "https://cdn.example/in-code.js";</script>
    </body></html>"""
    assert offline_html.external_resources(page) == [
        "https://cdn.example/a.css", "https://cdn.example/b.js", "https://cdn.example/c.png",
        "https://cdn.example/d.css", "//cdn.example/e.png", "https://cdn.example/f.png"]
    assert offline_html.external_resources("a { background: url(http://x.example/y.png) }",
                                           css=True) == ["http://x.example/y.png"]


def _site(tmp_path, page_html: str):
    """A GX-shaped site: a page two folders down, GX's own logo and favicon at the root."""
    site = tmp_path / "site"
    (site / "static" / "images").mkdir(parents=True)
    (site / "static" / "images" / "logo-long.png").write_bytes(b"\x89PNG logo")
    (site / "static" / "images" / "favicon.ico").write_bytes(b"icon")
    page = site / "validations" / "run" / "page.html"
    page.parent.mkdir(parents=True)
    page.write_text(page_html)
    return site, page


def test_cdn_references_become_checked_copies_inside_the_site(tmp_path, store):
    site, page = _site(tmp_path, f"""<html><head>
      <link rel="stylesheet" href="{FONTAWESOME}">
      <link rel="shortcut icon" href="../static/images/favicon.ico">
      <script src="{BOOTSTRAP_JS}" integrity="{BOOTSTRAP_JS_SRI}" crossorigin="anonymous"></script>
      <style>.brand {{ background: url('{GE_LOGO.replace("logo-long", "full_logo_dark")}') }}</style>
    </head><body><img src="{GE_LOGO}?d=20261204T101010Z"></body></html>""")

    assert offline_html.make_offline(site, store) == [page]

    text = page.read_text()
    assert offline_html.external_resources(text) == []
    vendor = "../../static/vendor"
    assert f'<script src="{vendor}/bootstrap-4.3.1/dist/js/bootstrap.min.js"></script>' in text
    assert f'href="{vendor}/fortawesome-fontawesome-free-6.6.0/css/all.min.css"' in text
    # GX's favicon reference one folder too shallow is pointed at the site's favicon.
    assert 'href="../../static/images/favicon.ico"' in text
    assert text.count('"../../static/images/logo-long.png"') == 1
    assert "url('../../static/images/logo-long.png')" in text
    copied = site / "static" / "vendor"
    assert (copied / "bootstrap-4.3.1" / "dist" / "js" / "bootstrap.min.js").read_bytes() == \
        (store / "bootstrap-4.3.1" / "dist" / "js" / "bootstrap.min.js").read_bytes()
    # What the stylesheet loads by relative path travels with it, and so do the licences.
    fonts = copied / "fortawesome-fontawesome-free-6.6.0" / "webfonts"
    assert (fonts / "fa-solid-900.woff2").stat().st_size > 10_000
    assert (copied / "fortawesome-fontawesome-free-6.6.0" / "LICENSE.txt").exists()
    assert json.loads((copied / "bootstrap-4.3.1" / "package.json").read_text())["license"] \
        == "MIT"
    assert not (copied / "vega-5.33.1").exists()  # only what the site's pages load


def test_a_copy_that_does_not_match_the_pages_integrity_hash_stops(tmp_path, store):
    wrong = BOOTSTRAP_JS_SRI[:-6] + "AAAAAA"
    site, _ = _site(tmp_path, f'<script src="{BOOTSTRAP_JS}" integrity="{wrong}" '
                              'crossorigin="anonymous"></script>')
    with pytest.raises(StageFailed, match="does not match the integrity"):
        offline_html.make_offline(site, store)


def test_an_unknown_network_reference_stops_and_is_named(tmp_path, store):
    site, _ = _site(tmp_path, '<link rel="stylesheet" href="https://cdn.example/new.css">'
                              '<img src="../missing.png">')
    with pytest.raises(StageFailed) as caught:
        offline_html.make_offline(site, store)
    message = str(caught.value)
    assert "validations/run/page.html: https://cdn.example/new.css" in message
    assert "validations/run/page.html: ../missing.png" in message


def test_a_missing_or_stale_asset_store_is_a_clear_error(tmp_path, store):
    site, _ = _site(tmp_path, f'<script src="{BOOTSTRAP_JS}"></script>')
    with pytest.raises(StageFailed, match="report assets missing or stale.*make install"):
        offline_html.make_offline(site, tmp_path / "no-store")
    stale = tmp_path / "stale-store"
    shutil.copytree(store, stale)
    (stale / offline_html.PINS_FILE).write_text(json.dumps({"bootstrap@4.3.0": "sha512-x"}))
    with pytest.raises(StageFailed, match="report assets missing or stale"):
        offline_html.make_offline(site, stale)
