"""The review parts of the report: each event's clip, a strip of its audio, and verdict
controls whose marks stay in the browser and export as ``verdicts.csv``.

Clips (``avrl clips``) stay files next to the scan output; the page links them:

* a local OUT: a link relative to the HTML file's folder (``file://`` when the page is built
  without one), so the folder can be moved or served with the report as it is;
* an S3 OUT: a presigned GET URL valid for ``clip_expiry_s`` (at most SigV4's 7 days). Anyone
  holding the page can play those clips until then; without ``clip_expiry_s`` the report
  links no S3 clip.

The audio strip is drawn from the clip itself (its audio, the source's): a peak envelope as
inline SVG. Verdicts (confirmed / false alarm / other label) are kept in ``localStorage``
under a key made of the scan output and its model ids, so marks survive a reload of the same
report, and the export writes ``event_id,verdict,label`` rows: the event's label when
confirmed, the chosen label for "other", and an empty label for a false alarm.
"""

from __future__ import annotations

import html
import io
import os
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from avrl_batch import storage

VERDICTS = ("confirmed", "false_alarm", "other")
_STRIP_W, _STRIP_H, _STRIP_COLUMNS = 240, 36, 120



def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


@dataclass(frozen=True)
class EventClip:
    """What the page shows of one event's clip."""

    src: str  # URL the <video> plays
    strip: str  # inline SVG of the audio, or a note that there is none


def event_clips(
    out: str,
    events: Iterable[dict[str, Any]],
    *,
    html_path: str | None = None,
    clip_expiry_s: int | None = None,
    endpoint_url: str | None = None,
) -> dict[str, EventClip]:
    """event_id -> its clip, for the events whose clip exists under ``out``."""
    from avrl_batch.clips import CLIP_SUFFIX

    root = storage.join(out, "clips")
    by_id = {
        uri.rsplit("/", 1)[-1][: -len(CLIP_SUFFIX)]: uri
        for uri in storage.list_files(root, suffix=CLIP_SUFFIX, endpoint_url=endpoint_url)
    }
    local = storage.parse_uri(out).scheme == "file"
    if not local and clip_expiry_s is None:
        return {}
    found = {}
    for e in events:
        uri = by_id.get(e["event_id"])
        if uri is None:
            continue
        data = storage.read_bytes(uri, endpoint_url=endpoint_url)
        if local:
            src = _local_link(storage.parse_uri(uri).path, html_path)
        else:
            src = storage.presigned_url(uri, expires_s=clip_expiry_s or 0,
                                        endpoint_url=endpoint_url)
        found[e["event_id"]] = EventClip(src=src, strip=audio_strip_svg(data))
    return found


def _local_link(path: str, html_path: str | None) -> str:
    if html_path is None:
        return "file://" + urllib.parse.quote(os.path.abspath(path), safe="/=")
    rel = os.path.relpath(os.path.abspath(path), os.path.dirname(os.path.abspath(html_path)))
    return urllib.parse.quote(rel.replace(os.sep, "/"), safe="/=")


def audio_strip_svg(clip: bytes) -> str:
    """A peak envelope of the clip's audio as a small inline SVG ("no audio" without it)."""
    import av
    import numpy as np

    chunks = []
    with av.open(io.BytesIO(clip)) as c:
        if not c.streams.audio:
            return '<span class="noaudio">no audio</span>'
        for frame in c.decode(audio=0):
            chunks.append(np.abs(frame.to_ndarray()).max(axis=0))
    wave = np.concatenate(chunks) if chunks else np.zeros(1, np.float32)
    cols = np.array_split(wave, min(_STRIP_COLUMNS, max(1, wave.size)))
    peak = np.array([c.max() if c.size else 0.0 for c in cols])
    peak = peak / max(float(peak.max()), 1e-6)  # the loudest moment of the clip fills it
    mid, dx = _STRIP_H / 2, _STRIP_W / len(peak)
    bars = "".join(
        f'<rect x="{i * dx:.1f}" y="{mid - p * mid:.1f}" width="{max(dx - 0.5, 0.5):.1f}" '
        f'height="{max(2 * p * mid, 0.5):.1f}"/>'
        for i, p in enumerate(peak)
    )
    return (
        f'<svg class="audio" viewBox="0 0 {_STRIP_W} {_STRIP_H}" width="{_STRIP_W}" '
        f'height="{_STRIP_H}" role="img" aria-label="audio of the clip">{bars}</svg>'
    )


def clip_cell(clip: EventClip | None) -> str:
    if clip is None:
        return '<td class="clip"><span class="noclip">no clip (avrl clips OUT)</span></td>'
    return (
        f'<td class="clip"><video controls preload="metadata" src="{_e(clip.src)}"></video>'
        f"<br>{clip.strip}</td>"
    )


def verdict_cell(event: dict[str, Any]) -> str:
    """Three buttons and, for "other", the label to give instead: one of the known labels
    (offered by the page's datalist) or a new one."""
    buttons = "".join(
        f'<button type="button" data-verdict="{v}">{v.replace("_", " ")}</button>'
        for v in VERDICTS
    )
    return (
        f'<td class="verdict">{buttons}<input class="other-label" list="avrl-labels" '
        f'placeholder="label instead of {_e(event["label"])}"></td>'
    )


def export_bar(labels: Iterable[str]) -> str:
    """The export button, the count of marks and the labels an "other" verdict offers."""
    options = "".join(f'<option value="{_e(lb)}"></option>' for lb in labels)
    return (
        '<p class="review"><button type="button" id="export-verdicts">export verdicts.csv'
        '</button> <span id="verdict-count">0 marked</span> · marks stay in this browser'
        f'</p><datalist id="avrl-labels">{options}</datalist>'
    )


def review_key(out: str, model_ids: Iterable[str]) -> str:
    """The localStorage key of this report's marks."""
    return "avrl-verdicts:" + out + ":" + ",".join(sorted(set(model_ids)))


CSS = """
td.clip video{display:block;width:240px;background:#000;border-radius:3px}
svg.audio{display:block;margin-top:3px} svg.audio rect{fill:#5b7186}
.noaudio,.noclip{color:#888;font-size:11px}
td.verdict button{border:1px solid #bbb;background:#fff;border-radius:4px;margin:1px;
padding:2px 6px;cursor:pointer;font:inherit;font-size:12px}
td.verdict button.on[data-verdict=confirmed]{background:#2e7d32;color:#fff}
td.verdict button.on[data-verdict=false_alarm]{background:#c62828;color:#fff}
td.verdict button.on[data-verdict=other]{background:#ef6c00;color:#fff}
td.verdict input{display:none;margin-top:3px;width:150px;font:inherit;font-size:12px}
td.verdict.other input{display:block}
p.review{margin:8px 0}
"""

# Marks: {event_id: {verdict, label}} in localStorage[KEY]; the page's key is in
# <main data-review-key>.
JS = """
(function(){
  var main=document.querySelector('main'), KEY=main.getAttribute('data-review-key');
  function load(){try{return JSON.parse(localStorage.getItem(KEY)||'{}');}catch(e){return {};}}
  var marks=load();
  function save(){localStorage.setItem(KEY,JSON.stringify(marks));show();}
  function show(){
    var n=0;
    document.querySelectorAll('tr[data-event-id]').forEach(function(tr){
      var m=marks[tr.getAttribute('data-event-id')], cell=tr.querySelector('td.verdict');
      if(!cell){return;}
      cell.querySelectorAll('button').forEach(function(b){
        b.classList.toggle('on',!!m&&m.verdict===b.getAttribute('data-verdict'));
      });
      cell.classList.toggle('other',!!m&&m.verdict==='other');
      if(m&&m.verdict==='other'&&m.label){cell.querySelector('input').value=m.label;}
      if(m){n++;}
    });
    document.getElementById('verdict-count').textContent=n+' marked';
  }
  document.querySelectorAll('td.verdict').forEach(function(cell){
    var tr=cell.closest('tr'), id=tr.getAttribute('data-event-id'),
        sel=cell.querySelector('input');
    cell.querySelectorAll('button').forEach(function(b){
      b.addEventListener('click',function(){
        var v=b.getAttribute('data-verdict');
        if(marks[id]&&marks[id].verdict===v){delete marks[id];}
        else{marks[id]={verdict:v,label:v==='other'?sel.value:
                        (v==='confirmed'?tr.getAttribute('data-label'):'')};}
        save();
      });
    });
    ['change','input'].forEach(function(kind){
      sel.addEventListener(kind,function(){
        if(marks[id]&&marks[id].verdict==='other'){marks[id].label=sel.value.trim();save();}
      });
    });
  });
  function csv(x){x=String(x);return /[",\\n]/.test(x)?'"'+x.replace(/"/g,'""')+'"':x;}
  document.getElementById('export-verdicts').addEventListener('click',function(){
    var rows=['event_id,verdict,label'];
    Object.keys(marks).sort().forEach(function(id){
      rows.push([id,marks[id].verdict,marks[id].label||''].map(csv).join(','));
    });
    var a=document.createElement('a');
    a.href=URL.createObjectURL(new Blob([rows.join('\\n')+'\\n'],{type:'text/csv'}));
    a.download='verdicts.csv';document.body.appendChild(a);a.click();a.remove();
  });
  show();
})();
"""
