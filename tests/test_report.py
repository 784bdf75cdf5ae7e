"""`avrl report`: one self-contained HTML file, rendered in a real headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from outputs import write_output_tree

from avrl_batch.query import QueryFilters, run_query
from avrl_batch.report import LABEL_COLOURS, build_report

CLI = [sys.executable, "-c", "from avrl_batch.cli import main; main()"]


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail(
            "headless Chromium is needed to check the HTML report: install the Debian package "
            "`chromium` (scripts/test.sh does it: apt-get install -y chromium)"
        )
    return exe


def render(html_file: Path, tmp: Path) -> tuple[str, Path]:
    """(the DOM after scripts ran, a 1280x2000 screenshot) from headless Chromium."""
    flags = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp / 'profile'}", "--window-size=1280,2000",
        "--hide-scrollbars",
    ]
    url = html_file.resolve().as_uri()
    png = tmp / "report.png"
    shot = subprocess.run([*flags, f"--screenshot={png}", url], capture_output=True, timeout=120)
    assert shot.returncode == 0 and png.exists(), shot.stderr.decode()[-2000:]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, timeout=120)
    assert dom.returncode == 0, dom.stderr.decode()[-2000:]
    return dom.stdout.decode(), png


class _Tags(HTMLParser):
    """Every start tag with its attributes, to look for external resources."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_report_renders_in_chromium(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_output_tree(out)
    html_file = tmp_path / "report.html"
    r = subprocess.run([*CLI, "report", str(out), "--html", str(html_file)],
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    assert "10 events, 3 cameras, 2 errors" in r.stdout.decode()

    # self-contained: no external scripts, styles, images or links
    page = html_file.read_text()
    tags = _Tags()
    tags.feed(page)
    for tag, attrs in tags.tags:
        for key in ("src", "href"):
            v = attrs.get(key)
            assert v is None or v.startswith(("data:", "#")), (tag, key, v)
        assert tag != "link", attrs

    dom, png = render(html_file, tmp_path)
    events = run_query(str(out), filters=QueryFilters()).to_pylist()
    ids = [e["event_id"] for e in events]
    # every event is in the list (a row with its thumbnail) and on its camera's timeline
    rows = re.findall(r'<tr id="ev-([0-9a-f]+)" data-event-id="\1"', dom)
    bars = re.findall(r'<a href="#ev-([0-9a-f]+)" class="bar" data-event-id="\1"', dom)
    assert sorted(rows) == sorted(ids) and sorted(bars) == sorted(ids)
    assert dom.count('src="data:image/jpeg;base64,') == sum(1 for e in events if e["thumbnail"])
    assert dom.count('<svg class="timeline"') == 4  # 3 cameras + one file with no start
    for cam in ("cam01", "cam02", "Gate 3 (north)"):
        assert f'data-camera-count="{cam}"' in dom
    # error rows, with hostile text escaped (no <b> element made from a file name)
    assert dom.count("<tr data-error-source=") == 2
    assert "&lt;b&gt;odd&lt;/b&gt; &amp; \"quoted\".mp4" in dom
    assert "<b>odd</b>" not in dom

    from PIL import Image

    im = Image.open(png).convert("RGB")
    assert im.size == (1280, 2000)
    colours = im.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 500, "screenshot looks blank"
    counts = {rgb: n for n, rgb in colours}
    # the label colours really were painted (bars, chips), not just present in the source
    for label in ("fight", "shoot", "knockdown"):
        rgb = tuple(int(LABEL_COLOURS[label][i : i + 2], 16) for i in (1, 3, 5))
        assert counts.get(rgb, 0) > 100, f"{label} colour not on screen"


def test_report_of_an_output_with_only_errors(tmp_path: Path) -> None:
    full = tmp_path / "full"
    write_output_tree(full)
    only = tmp_path / "only-errors"
    (only / "errors").mkdir(parents=True)
    for p in (full / "errors").iterdir():
        p.rename(only / "errors" / p.name)
    rep = build_report(str(only))
    assert (rep.n_events, rep.n_cameras, rep.n_errors) == (0, 0, 2)
    assert "No events found." in rep.html and "No recordings were scanned" in rep.html


def test_report_of_nothing_is_one_line(tmp_path: Path) -> None:
    r = subprocess.run([*CLI, "report", str(tmp_path), "--html", str(tmp_path / "r.html")],
                       capture_output=True, timeout=120)
    err = r.stderr.decode()
    assert r.returncode == 2 and "Traceback" not in err and err.startswith("error: no scan output")
