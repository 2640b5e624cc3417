"""The gate's decision report renders as one self-contained HTML page: parsed here, it names
every reason, carries the slice table with the regressed slice marked, and loads nothing."""
from __future__ import annotations

from html.parser import HTMLParser

import numpy as np

from pipeline.params import GateParams
from pipeline.registry import GateDecision, GateRows, ModelRows, decide, report
from tests.unit.test_gate_bootstrap import BEATEN_PEER, scores, served


class Page(HTMLParser):
    """Collects list items, table rows (with their class) and anything that would load."""

    def __init__(self):
        super().__init__()
        self.items, self.rows, self.loads, self.tags = [], [], [], set()
        self._cell, self._row, self._in, self._tables = None, None, [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag in ("script", "img", "link", "iframe") or "src" in attrs or \
                attrs.get("href", "").startswith(("http", "//")):
            self.loads.append((tag, attrs))
        if tag == "table":
            self._tables.append(attrs.get("id"))
        if tag == "li":
            self._cell = []
        if tag == "tr":
            self._row = {"class": attrs.get("class"), "cells": [], "table": self._tables[-1]}
        if tag == "td":
            self._cell = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag == "li":
            self.items.append("".join(self._cell))
            self._cell = None
        if tag == "td":
            self._row["cells"].append("".join(self._cell))
            self._cell = None
        if tag == "tr" and self._row["cells"]:
            self.rows.append(self._row)


def test_the_report_names_each_reason_and_the_slice_table():
    rng = np.random.default_rng(5)
    group = np.repeat(["g1", "g2", "g3"], [300, 300, 150])
    labels = rng.integers(0, 2, group.size)
    champion = scores(labels, 11, signal=1.5)
    z = np.where(group == "g3", 0.0, 4.0) * labels + rng.normal(0, 1, labels.size)
    challenger = np.stack([1 - 1 / (1 + np.exp(-z)), 1 / (1 + np.exp(-z))], axis=1)
    rows = GateRows(labels, served(labels, challenger), served(labels, champion),
                    {"group": group})
    promoted, reasons, evidence = decide("hateful_memes", GateParams(), True, rows,
                                         text_peer=BEATEN_PEER)
    evidence["calibration"]["challenger"] |= {"temperature": 1.7,
                                              "evaluate_test_ece_before": 0.21,
                                              "evaluate_test_ece_after": 0.04}
    decision = GateDecision("keep", "mmguard-<hm>", "7", "6", reasons, {}, {}, "d1", "now",
                            evidence)
    text = report.render(decision)
    page = Page()
    page.feed(text)

    assert not page.loads and "style" in page.tags  # self-contained: inline CSS only
    assert "&lt;hm&gt;" in text  # escaped
    assert page.items[:len(reasons)] == reasons  # every reason, in order
    slices = [r for r in page.rows if r["table"] == "slices"]
    assert len(slices) == len(evidence["slices"])
    regressed = [r["cells"][:3] for r in slices if r["class"] == "regressed"]
    assert ["group", "g3", "auroc"] in regressed
    assert all(r["cells"][1] == "g3" for r in slices if r["class"] == "regressed")
    # the point-estimate rule's verdict and the calibration table are there too
    assert "would say <b>promote</b>" in text
    calibration = [r["cells"] for r in page.rows if r["cells"][0] == "challenger"
                   and "1.7000" in r["cells"]]
    assert calibration and "0.2100" in calibration[0] and "0.0400" in calibration[0]
    assert not promoted
