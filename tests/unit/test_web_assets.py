"""The browser client's files (chatsrv/web/): small, self-contained, and never
turning server text into markup. Its behaviour is tested in a real browser in
tests/integration/test_web_browser.py."""

from __future__ import annotations

import re
from pathlib import Path

import chatsrv.web

WEB = Path(chatsrv.web.__file__).parent


def test_the_whole_client_is_at_most_100_kb():
    sizes = {p.name: p.stat().st_size for p in WEB.iterdir() if p.is_file()}
    assert {"index.html", "app.js", "style.css"} <= sizes.keys()
    assert sum(sizes.values()) <= 100 * 1024, sizes


def test_no_markup_sinks_and_nothing_loaded_from_elsewhere():
    app = (WEB / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in app, sink
    page = (WEB / "index.html").read_text()
    assert not re.search(r"<script>|<style|\son\w+=|https?://", page)  # CSP: default-src 'self'
    assert not re.search(r"url\(|@import", (WEB / "style.css").read_text())
