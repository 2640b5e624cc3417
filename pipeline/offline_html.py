"""HTML reports that render offline: the files a page loads from a CDN are served from its folder.

Great Expectations' Data Docs load bootstrap, jquery, bootstrap-table, font-awesome, vega and
more from CDNs (its 1.x package ships only its own css, fonts and images), so opened offline they
show unstyled and their tables neither sort nor filter. `make_offline(site)` rewrites every page
and stylesheet of a written site: each CDN reference becomes a relative path to a copy under
`static/vendor/`, taken from the asset store, and a reference it does not know stops with an
error instead of leaving a page that reaches for the network. Links a reader clicks (`<a href>`)
stay as they are; only what renders the page counts.

The asset store holds the exact files the CDN URLs name, from the npm registry's tarballs of the
pinned versions below (checked against their sha512 integrity, as a package-lock.json would).
`make install` fills it once with the machine's npm (`python -m pipeline.offline_html fetch`),
inside the virtual environment; nothing is fetched when a report is written. Each package copied
into a site brings its licence files and package.json along.

The Evidently drift report needs none of this: it inlines its scripts and styles.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from html import escape, unescape
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from pipeline import atomic
from pipeline.errors import StageFailed

STORE_ENV = "MMGUARD_REPORT_ASSETS"  # another asset store than the virtual environment's
PINS_FILE = "pins.json"  # written last: a store holding it, with these pins, is complete
VENDOR = PurePosixPath("static/vendor")  # inside a site


@dataclass(frozen=True)
class NpmPackage:
    name: str
    version: str
    integrity: str  # the registry's sha512 of the tarball

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def folder(self) -> str:
        """npm pack's file name without .tgz: `@scope/name` becomes `scope-name-version`."""
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}"


# The versions GE 1.x's templates name; `vega@5`, `vega-lite@5` and `vega-embed@6` (jsdelivr
# serves the newest of that major) are pinned to the newest there was when this was written.
BOOTSTRAP = NpmPackage(
    "bootstrap", "4.3.1",
    "sha512-rXqOmH1VilAt2DyPzluTi2blhk17bO7ef+zLLPlWvG494pDxcM234pJ8wTc/6R40UWizAIIMgxjvxZg5kmsbag==")
JQUERY = NpmPackage(
    "jquery", "3.7.1",
    "sha512-m4avr8yL8kmFN8psrbFFFmB/If14iN5o9nw/NgnnM+kybDJpRsAynV2BsfpTYrTRysYUdADVD7CkUUizgkpLfg==")
POPPER = NpmPackage(
    "popper.js", "1.12.9",
    "sha512-s0EEi9xiSCdqz9lV4IiVH5yIZnDX/U1t0tCjB+0jXx9jW8lrR7kOpVupiUg175ogqVoudpDXHF1p6dKATCHMeg==")
TABLE = NpmPackage(
    "bootstrap-table", "1.19.1",
    "sha512-WvV+l1AI/C+zThaKmfHmi/IuayVNB0qdFyEhFx1jyZhO0oLtNJNANkCR3rvJf6Dkh72dsLElxpE/bzK9seEQLA==")
# GE's templates take the filter-control stylesheet from 1.19.0 (the rest from 1.19.1).
TABLE_1190 = NpmPackage(
    "bootstrap-table", "1.19.0",
    "sha512-L+USHm3X9FKocx/6yngGu12yF6r6s1Ntuc+hoIK2a2QQJjHw5kcySLiE2HY/9sEaSGAOfPbfQOtBH3uKkcpqEA==")
DATEPICKER = NpmPackage(
    "bootstrap-datepicker", "1.9.0",
    "sha512-9rYYbaVOheGYxjOr/+bJCmRPihfy+LkLSg4fIFMT9Od8WwWB/MB50w0JO1eBgKUMbb7PFHQD5uAfI3ArAxZRXA==")
FONTAWESOME = NpmPackage(
    "@fortawesome/fontawesome-free", "6.6.0",
    "sha512-60G28ke/sXdtS9KZCpZSHHkCbdsOGEhIUGlwq6yhY74UpTiToIh8np7A8yphhM4BWsvNFtIvLpi4co+h9Mr9Ow==")
BOOTSTRAP_DARK = NpmPackage(
    "@forevolve/bootstrap-dark", "1.1.0",
    "sha512-A3ucpEpxPoTVO490lZZCfjPXxv832l7mm1IxX3bXyxvgwnPGXDLyh7dWrphXKO8YBAu3EswbBEu3VSW8NRMW3A==")
VEGA = NpmPackage(
    "vega", "5.33.1",
    "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==")
VEGA_LITE = NpmPackage(
    "vega-lite", "5.23.0",
    "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==")
VEGA_EMBED = NpmPackage(
    "vega-embed", "6.29.0",
    "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==")


@dataclass(frozen=True)
class Asset:
    package: NpmPackage
    path: str  # inside the package
    companions: tuple[str, ...] = ()  # what the file itself loads by relative path (folders whole)


_FILTER_CONTROL_CSS = "dist/extensions/filter-control/bootstrap-table-filter-control"
# Every CDN URL (query and fragment dropped) a page may load, and the file it names.
CDN_ASSETS: dict[str, Asset] = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css":
        Asset(BOOTSTRAP, "dist/css/bootstrap.min.css"),
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js":
        Asset(BOOTSTRAP, "dist/js/bootstrap.min.js"),
    "https://code.jquery.com/jquery-3.7.1.min.js": Asset(JQUERY, "dist/jquery.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js":
        Asset(POPPER, "dist/umd/popper.min.js"),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css":
        Asset(TABLE, "dist/bootstrap-table.min.css"),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js":
        Asset(TABLE, "dist/bootstrap-table.min.js"),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/"
    "bootstrap-table-filter-control.min.js":
        Asset(TABLE, f"{_FILTER_CONTROL_CSS}.min.js"),
    f"https://unpkg.com/bootstrap-table@1.19.0/{_FILTER_CONTROL_CSS}.css":
        Asset(TABLE_1190, f"{_FILTER_CONTROL_CSS}.css"),
    f"https://unpkg.com/bootstrap-table@1.19.0/{_FILTER_CONTROL_CSS}.min.css":
        Asset(TABLE_1190, f"{_FILTER_CONTROL_CSS}.min.css"),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/"
    "bootstrap-datepicker.min.css":
        Asset(DATEPICKER, "dist/css/bootstrap-datepicker.min.css"),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/"
    "bootstrap-datepicker.min.js":
        Asset(DATEPICKER, "dist/js/bootstrap-datepicker.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css":
        Asset(FONTAWESOME, "css/all.min.css", companions=("webfonts",)),
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/"
    "bootstrap-prefers-dark.css":
        Asset(BOOTSTRAP_DARK, "dist/css/bootstrap-prefers-dark.css"),
    "https://cdn.jsdelivr.net/npm/vega@5": Asset(VEGA, "build/vega.min.js"),
    "https://cdn.jsdelivr.net/npm/vega-lite@5": Asset(VEGA_LITE, "build/vega-lite.min.js"),
    "https://cdn.jsdelivr.net/npm/vega-embed@6": Asset(VEGA_EMBED, "build/vega-embed.min.js"),
}
PACKAGES = tuple(dict.fromkeys(asset.package for asset in CDN_ASSETS.values()))

# GE's logo, from its S3 bucket; the site already holds a copy. The dark-scheme logo has none, so
# dark mode shows the same logo.
_GE_ASSETS = "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com"
SITE_FILES: dict[str, str] = {
    f"{_GE_ASSETS}/logo-long.png": "static/images/logo-long.png",
    f"{_GE_ASSETS}/full_logo_dark.png": "static/images/logo-long.png",
}

LICENCE = re.compile(r"^(licen[cs]e|copying|notice)", re.IGNORECASE)


# ---------------------------------------------------------------- the asset store

def default_store() -> Path:
    """The virtual environment's asset store, unless MMGUARD_REPORT_ASSETS names another."""
    return Path(os.environ.get(STORE_ENV) or Path(sys.prefix) / "share" / "mmguard" /
                "report-assets")


def pins() -> dict[str, str]:
    return {package.spec: package.integrity for package in PACKAGES}


def store_is_complete(store: Path) -> bool:
    try:
        return json.loads((store / PINS_FILE).read_text()) == pins()
    except (OSError, ValueError):
        return False


def fetch(store: Path | None = None) -> Path:
    """Download the pinned tarballs with npm, check each one's integrity and keep the files the
    pages load (plus licences and package.json); the store is replaced whole or not at all."""
    store = store or default_store()
    if shutil.which("npm") is None:
        raise StageFailed("npm not found: the report assets come from the npm registry "
                          "(Debian: apt-get install nodejs npm)")
    with atomic.directory(store) as staging, tempfile.TemporaryDirectory() as downloads:
        for package in PACKAGES:
            tarball = _npm_pack(package, Path(downloads))
            _check_integrity(tarball, package)
            wanted = [a.path for a in CDN_ASSETS.values() if a.package == package]
            wanted += [c for a in CDN_ASSETS.values() if a.package == package
                       for c in a.companions]
            _extract(tarball, wanted, staging / package.folder)
        atomic.write_json(staging / PINS_FILE, pins())
    return store


def _npm_pack(package: NpmPackage, into: Path) -> Path:
    done = subprocess.run(
        ["npm", "pack", "--json", "--ignore-scripts", "--no-update-notifier",
         "--pack-destination", str(into), package.spec],
        capture_output=True, text=True)
    if done.returncode != 0:
        raise StageFailed(f"npm pack {package.spec} failed: {done.stderr.strip()[-2000:]}")
    [packed] = json.loads(done.stdout)
    return into / packed["filename"]


def _check_integrity(tarball: Path, package: NpmPackage) -> None:
    digest = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if f"sha512-{digest}" != package.integrity:
        raise StageFailed(f"{package.spec}: the tarball's sha512 is sha512-{digest}, "
                          f"pinned {package.integrity}")


def _extract(tarball: Path, wanted: list[str], dest: Path) -> None:
    """Only regular files under package/ that are wanted (a folder counts whole), licences and
    package.json; names with `..` or absolute paths are refused."""
    found = set()
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive.getmembers():
            inner = PurePosixPath(member.name)
            if not member.isfile() or inner.parts[:1] != ("package",) or ".." in inner.parts:
                continue
            rel = PurePosixPath(*inner.parts[1:])
            top_level = len(rel.parts) == 1
            hit = next((w for w in wanted if rel.as_posix() == w
                        or rel.as_posix().startswith(w.rstrip("/") + "/")), None)
            if hit is None and not (top_level and (LICENCE.match(rel.name)
                                                   or rel.name == "package.json")):
                continue
            found.add(hit)
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.extractfile(member).read())
    missing = sorted(set(wanted) - found)
    if missing:
        raise StageFailed(f"{tarball.name} has no {missing}")


# ---------------------------------------------------------------- scanning pages

class _ResourceScanner(HTMLParser):
    """The URLs an HTML page loads to render: script/img/iframe/source sources, every <link>'s
    href, srcset, poster, <object data>, and url()/@import in <style> blocks and style=."""

    SOURCES = {"script", "img", "iframe", "frame", "source", "embed", "audio", "video", "track",
               "input"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        if tag in self.SOURCES and values.get("src"):
            self.urls.append(values["src"])
        if tag == "link" and values.get("href"):
            self.urls.append(values["href"])
        if tag == "object" and values.get("data"):
            self.urls.append(values["data"])
        if tag == "video" and values.get("poster"):
            self.urls.append(values["poster"])
        if values.get("srcset"):
            self.urls += [part.split()[0] for part in values["srcset"].split(",") if part.strip()]
        if values.get("style"):
            self.urls += css_urls(values["style"])
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.urls += css_urls(data)


_CSS_URL = re.compile(r"""url\(\s*(['"]?)(.*?)\1\s*\)|@import\s+(['"])(.*?)\3""", re.IGNORECASE)


def css_urls(css: str) -> list[str]:
    return [m.group(2) if m.group(2) is not None else m.group(4) for m in _CSS_URL.finditer(css)]


def resources(text: str, css: bool = False) -> list[str]:
    """Every URL an HTML page (or a stylesheet, `css=True`) loads to render, once each."""
    if css:
        return list(dict.fromkeys(css_urls(text)))
    scanner = _ResourceScanner()
    scanner.feed(text)
    scanner.close()
    return list(dict.fromkeys(scanner.urls))


def is_external(url: str) -> bool:
    return urlsplit(url.strip()).scheme in ("http", "https") or url.strip().startswith("//")


def is_local(url: str) -> bool:
    """A relative path into the site (not data:, not an in-page #anchor)."""
    parts = urlsplit(url.strip())
    return not parts.scheme and not parts.netloc and bool(parts.path)


def external_resources(text: str, css: bool = False) -> list[str]:
    """The network URLs an HTML page (or a stylesheet) loads to render."""
    return [u for u in resources(text, css) if is_external(u)]


def _key(url: str) -> str:
    parts = urlsplit(url.strip() if not url.strip().startswith("//") else "https:" + url.strip())
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


# ---------------------------------------------------------------- rewriting a site

def make_offline(site: Path, store: Path | None = None) -> list[Path]:
    """Point every CDN reference in the site's pages and stylesheets at a copy inside the site;
    returns the files rewritten. Raises StageFailed naming any reference it cannot serve from
    the site, and when the asset store is missing (run `make install`)."""
    store = store or default_store()
    if not store_is_complete(store):
        raise StageFailed(f"report assets missing or stale in {store}: run `make install` (or "
                          "`python -m pipeline.offline_html fetch`) so HTML reports render "
                          "offline")
    unserved, rewritten = [], []
    for page in sorted(site.rglob("*")):
        if page.suffix not in (".html", ".css") or _inside(page, site / VENDOR):
            continue
        text = page.read_text(encoding="utf-8")
        new = text
        for url in resources(text, css=page.suffix == ".css"):
            if is_external(url):
                local = _local_copy(_key(url), site, store)
            elif is_local(url):
                if _resolves(url, page, site):
                    continue
                local = _from_site_root(url, site)
            else:
                continue
            if local is None:
                unserved.append(f"{page.relative_to(site)}: {url}")
                continue
            new = _replace_reference(new, url, Path(os.path.relpath(local, page.parent)))
        if page.suffix == ".html":
            new = _TAG.sub(lambda tag: _without_cors(tag.group(0), page), new)
        if new != text:
            page.write_text(new, encoding="utf-8")
            rewritten.append(page)
    if unserved:
        raise StageFailed("HTML report loads what the site does not hold (a CDN file belongs in "
                          "pipeline/offline_html.py's CDN_ASSETS): " + "; ".join(unserved))
    return rewritten


def _resolves(url: str, page: Path, site: Path) -> bool:
    target = (page.parent / urlsplit(url.strip()).path).resolve()
    return target.is_file() and _inside(target, site.resolve())


def _from_site_root(url: str, site: Path) -> Path | None:
    """GX writes some pages' favicon one folder too shallow: a relative reference that misses
    but names a file from the site's root is pointed there."""
    parts = [p for p in PurePosixPath(urlsplit(url.strip()).path).parts if p not in ("..", ".")]
    target = site.joinpath(*parts) if parts else site
    return target if target.is_file() else None


def _replace_reference(text: str, url: str, local: Path) -> str:
    """Replace `url` where it stands as a whole attribute value or url() argument; the page may
    hold it HTML-escaped (`&amp;`)."""
    for written in {url, escape(url, quote=False), escape(url)}:
        for before, after in (('"', '"'), ("'", "'"), ("(", ")")):
            text = text.replace(f"{before}{written}{after}", f"{before}{local.as_posix()}{after}")
    return text


_TAG = re.compile(r"<(?:script|link)\b[^>]*>", re.IGNORECASE)
_CORS_ATTR = re.compile(r"""\s(integrity|crossorigin)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+)))?""",
                        re.IGNORECASE)
_REF_ATTR = re.compile(r"""\s(?:src|href)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.IGNORECASE)


def _without_cors(tag: str, page: Path) -> str:
    """A file:// page cannot fetch with CORS, so `crossorigin` on a local script or stylesheet
    blocks it (and subresource integrity needs CORS). The integrity hash is checked here
    instead, against the copy the tag now loads, and both attributes go."""
    ref, cors = _REF_ATTR.search(tag), list(_CORS_ATTR.finditer(tag))
    if ref is None or not cors:
        return tag
    url = unescape(next(v for v in ref.groups() if v is not None))
    if not is_local(url):
        return tag
    for attr in cors:
        value = unescape(next((v for v in attr.groups()[1:] if v is not None), ""))
        if attr.group(1).lower() == "integrity" and value:
            _check_subresource_integrity(page.parent / urlsplit(url).path, value, page)
    return _CORS_ATTR.sub("", tag)


def _check_subresource_integrity(file: Path, integrity: str, page: Path) -> None:
    data = file.read_bytes()
    for expected in integrity.split():
        algorithm, _, digest = expected.partition("-")
        if algorithm in ("sha256", "sha384", "sha512") and \
                base64.b64encode(hashlib.new(algorithm, data).digest()).decode() == digest:
            return
    raise StageFailed(f"{file} does not match the integrity {integrity!r} {page.name} names")


def _inside(path: Path, folder: Path) -> bool:
    return folder == path or folder in path.parents


def _local_copy(key: str, site: Path, store: Path) -> Path | None:
    """The site's copy of what `key` names, copied in from the store on first use."""
    if key in SITE_FILES:
        local = site / SITE_FILES[key]
        return local if local.is_file() else None
    asset = CDN_ASSETS.get(key)
    if asset is None:
        return None
    source, vendored = store / asset.package.folder, site / VENDOR / asset.package.folder
    if not vendored.exists():  # the package's licences and package.json travel with it
        vendored.mkdir(parents=True)
        for entry in source.iterdir():
            if entry.is_file():
                shutil.copy2(entry, vendored / entry.name)
    for rel in (asset.path, *asset.companions):
        if (source / rel).is_dir():
            shutil.copytree(source / rel, vendored / rel, dirs_exist_ok=True)
        elif not (vendored / rel).exists():
            (vendored / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / rel, vendored / rel)
    return vendored / asset.path


if __name__ == "__main__":
    if sys.argv[1:] != ["fetch"]:
        sys.exit("usage: python -m pipeline.offline_html fetch")
    if store_is_complete(default_store()):
        print("report assets already in", default_store())
    else:
        try:
            print("report assets fetched into", fetch())
        except StageFailed as failure:
            sys.exit(f"report assets: {failure}")
