"""The report as a review page, driven in a real headless Chromium over the DevTools
protocol: each event's clip plays (with its audio track when the recording has audio),
verdict clicks export as verdicts.csv, and the marks survive a reload."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from cliphelp import MARGIN, make_clip_out
from test_report import chromium

from avrl_batch.clips import ClipSpec, sync_clips

CLI = [sys.executable, "-c", "from avrl_batch.cli import main; main()"]


class _DevTools:
    """One DevTools websocket: ``call`` sends a command and waits for its answer (events in
    between are dropped)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws, self.n = ws, 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.n += 1
        await self.ws.send_json({"id": self.n, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=60)
            if msg.get("id") == self.n:
                assert "error" not in msg, msg
                return msg["result"]

    async def js(self, expression: str) -> Any:
        res = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True,
                              returnByValue=True)
        assert "exceptionDetails" not in res, res["exceptionDetails"]
        return res["result"].get("value")

    async def load(self, url: str | None = None) -> None:
        if url is None:
            await self.call("Page.reload")
            await asyncio.sleep(0.5)
        else:
            await self.call("Page.navigate", url=url)
        deadline = time.monotonic() + 60
        while await self.js("document.readyState") != "complete":
            assert time.monotonic() < deadline, "the page did not load"
            await asyncio.sleep(0.1)


# waits until the event's <video> has its current frame (readyState >= 2) or fails
_PLAYABLE = """
(async function(){
  var v=document.querySelector('tr[data-event-id="%s"] video');
  if(v.readyState<2){
    await new Promise(function(ok,fail){
      v.addEventListener('loadeddata',ok,{once:true});
      v.addEventListener('error',function(){fail(new Error('video error '+
        (v.error&&v.error.code)));},{once:true});
      v.preload='auto'; v.load();
    });
  }
  return {ready:v.readyState, duration:v.duration,
          audio:v.audioTracks?v.audioTracks.length:null};
})()
"""


def _click(event_id: str, verdict: str) -> str:
    return (f"document.querySelector('tr[data-event-id=\"{event_id}\"] "
            f"button[data-verdict=\"{verdict}\"]').click()")


def _marks() -> str:
    return """(function(){var m={};
      document.querySelectorAll('tr[data-event-id]').forEach(function(tr){
        var on=tr.querySelector('td.verdict button.on');
        m[tr.getAttribute('data-event-id')]=on?on.getAttribute('data-verdict'):null;});
      return {marks:m, count:document.getElementById('verdict-count').textContent};})()"""


async def _review(port: int, url: str, downloads: Path) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/version") as r:
            browser_ws = (await r.json())["webSocketDebuggerUrl"]
        async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
            page_ws = next(t for t in await r.json() if t["type"] == "page")[
                "webSocketDebuggerUrl"]
        # the download setting lasts as long as the session that made it: keep it open
        async with (
            http.ws_connect(browser_ws, max_msg_size=0) as bws,
            http.ws_connect(page_ws, max_msg_size=0) as ws,
        ):
            await _DevTools(bws).call("Browser.setDownloadBehavior", behavior="allow",
                                      downloadPath=str(downloads))
            page = _DevTools(ws)
            await page.call("Page.enable")
            await page.load(url)
            ids = await page.js(
                "Array.from(document.querySelectorAll('tr[data-event-id]'))"
                ".map(function(tr){return tr.getAttribute('data-event-id');})")
            played = {i: await page.js(_PLAYABLE % i) for i in ids}
            await page.js(_click("cam01ev0", "confirmed"))
            await page.js(_click("cam01ev1", "false_alarm"))
            await page.js(_click("cam02ev0", "other"))
            await page.js("var s=document.querySelector('tr[data-event-id=\"cam02ev0\"] input');"
                          "s.value='fight'; s.dispatchEvent(new Event('change'))")
            # a click on the mark that is on takes it back; a second click sets it again
            await page.js(_click("cam01ev1", "false_alarm"))
            undone = await page.js(_marks())
            await page.js(_click("cam01ev1", "false_alarm"))
            await page.js("document.getElementById('export-verdicts').click()")
            target = downloads / "verdicts.csv"
            deadline = time.monotonic() + 30
            while not target.exists():
                assert time.monotonic() < deadline, "no verdicts.csv was downloaded"
                await asyncio.sleep(0.2)
            before = await page.js(_marks())
            await page.load()
            after = await page.js(_marks())
            return {"played": played, "undone": undone, "before": before, "after": after,
                    "csv": target.read_text()}


def test_review_page_plays_clips_exports_verdicts_and_keeps_marks(tmp_path: Path) -> None:
    out = tmp_path / "out"
    expected = make_clip_out(tmp_path / "rec", str(out))
    assert sync_clips(str(out), spec=ClipSpec(margin_s=MARGIN)).written == 3
    html_file = tmp_path / "pages" / "review.html"
    r = subprocess.run([*CLI, "report", str(out), "--html", str(html_file)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    page = html_file.read_text()
    # clips are linked relative to the page, everything else is inline
    assert 'src="../out/clips/date=2026-03-01/camera=cam01/cam01ev0.mp4"' in page
    assert page.count("<svg class=\"audio\"") == 2 and "no audio" in page

    proc = subprocess.Popen(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--remote-debugging-port=0",
         "--enable-blink-features=AudioVideoTracks", "--allow-file-access-from-files",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        port = None
        for line in proc.stderr:  # Chromium says where its DevTools listen
            m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            if m:
                port = int(m.group(1))
                break
        assert port is not None, "Chromium did not start its DevTools server"
        downloads = tmp_path / "downloads"
        downloads.mkdir()
        got = asyncio.run(asyncio.wait_for(
            _review(port, html_file.resolve().as_uri(), downloads), timeout=240))
    finally:
        proc.kill()
        proc.wait(timeout=30)

    for event_id, (start, end, audio) in expected.items():
        seconds = 30.0 if event_id.startswith("cam01") else 16.0
        want = min(end + MARGIN, seconds) - max(0.0, start - MARGIN)
        p = got["played"][event_id]
        assert p["ready"] >= 2, (event_id, p)
        assert abs(p["duration"] - want) <= 0.5, (event_id, p, want)
        assert p["audio"] == (1 if audio else 0), (event_id, p)
    assert got["undone"]["marks"]["cam01ev1"] is None
    marks = {"cam01ev0": "confirmed", "cam01ev1": "false_alarm", "cam02ev0": "other"}
    assert got["before"] == {"marks": marks, "count": "3 marked"}
    assert got["after"] == got["before"], json.dumps(got["after"])  # kept across the reload
    rows = list(csv.DictReader(io.StringIO(got["csv"])))
    assert rows == [
        {"event_id": "cam01ev0", "verdict": "confirmed", "label": "shoot"},
        {"event_id": "cam01ev1", "verdict": "false_alarm", "label": ""},
        {"event_id": "cam02ev0", "verdict": "other", "label": "fight"},
    ]
