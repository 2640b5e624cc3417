"""Debian's Chromium, headless, through its ChromeDriver (selenium), with the network shut: every
host name fails to resolve and any connection goes to a proxy on a closed local port. Each page
load is recorded from the DevTools network events and the console (`make browser` installs
Chromium and ChromeDriver)."""
from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tests.pipeline.registry_fixtures import free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Without the background-networking flags Chromium reaches for its own services at every start.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,900")
# Schemes that never leave the machine: the page's files, inline data, the browser's own pages.
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome:", "chrome-extension:")


@dataclass
class PageLoad:
    requests: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (url, Chromium's error)
    console_errors: list[str] = field(default_factory=list)

    @property
    def left_the_machine(self) -> list[str]:
        return [u for u in self.requests if not u.startswith(LOCAL_SCHEMES)]


@contextmanager
def offline_chromium() -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), \
        "Chromium and ChromeDriver are missing: run `make browser`"
    closed_port = free_port()  # bound and released: nothing listens there
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (*FLAGS, f"--user-data-dir={profile}",
                     "--host-resolver-rules=MAP * ~NOTFOUND",
                     f"--proxy-server=http://127.0.0.1:{closed_port}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        # A driver path given: selenium's own driver manager (which downloads) is never asked.
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def load(driver, url: str, settle=None) -> PageLoad:
    """Open `url` on a clean slate and record what it loaded; `settle(driver)` waits for the
    page's own scripts (a React app renders after the load event)."""
    driver.get("about:blank")
    driver.get_log("performance"), driver.get_log("browser")  # drop the start-up's records
    driver.get(url)
    if settle is not None:
        settle(driver)
    record, urls = PageLoad(), {}
    for entry in driver.get_log("performance"):
        event = json.loads(entry["message"])["message"]
        params = event.get("params", {})
        if event["method"] == "Network.requestWillBeSent":
            urls[params["requestId"]] = params["request"]["url"]
            record.requests.append(params["request"]["url"])
        elif event["method"] == "Network.loadingFailed" and not params.get("canceled"):
            record.failed.append((urls.get(params["requestId"], params["requestId"]),
                                  params.get("errorText", "")))
    record.console_errors = [e["message"] for e in driver.get_log("browser")
                             if e["level"] == "SEVERE"]
    return record
