"""``avrl scan``: find anomaly events in an archive (local folder or S3) on Ray."""

from __future__ import annotations

import json
from typing import Any

import typer

from avrl_batch.cli import app
from avrl_batch.commands.options import (
    EndpointUrl,
    Enter,
    Exit,
    MergeGap,
    MinEvent,
    Smooth,
    TimelineRule,
)


@app.command("scan")
def scan(
    source: str = typer.Argument(
        ..., help="archive: a folder, a file, file:///path or s3://bucket/prefix"
    ),
    model: str = typer.Option(..., "--model", "-m", help="model file (local or s3://)"),
    out: str = typer.Option(..., "--out", "-o", help="output root (local or s3://)"),
    window: float | None = typer.Option(None, help="window length in s (default: the model's)"),
    stride: float | None = typer.Option(None, help="window stride in s (default: = window)"),
    segment: float = typer.Option(
        300.0, help="cut recordings into segments of at most this many s (parallelism, memory)"
    ),
    include: list[str] = typer.Option(
        [], "--include", help="glob of files to scan (repeatable; default: common video types)"
    ),
    exclude: list[str] = typer.Option([], "--exclude", help="glob of files to leave out"),
    endpoint_url: EndpointUrl = None,
    actors: int | None = typer.Option(
        None, help="inference actors (default: one per GPU, or 1 without GPUs)"
    ),
    gpus_per_actor: float = typer.Option(1.0, help="GPUs per inference actor (GPU clusters)"),
    batch_size: int = typer.Option(16, help="windows per inference batch"),
    writers: int = typer.Option(
        8, help="threads writing finished sources' outputs during the scan (0: the driver "
        "writes them one by one)"
    ),
    wave: int = typer.Option(
        2048, help="sources probed and planned at a time: the next wave is probed while this "
        "one decodes, so decoding starts early and the driver holds two waves' plans"
    ),
    address: str | None = typer.Option(
        None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)"
    ),
    camera_pattern: str | None = typer.Option(
        None,
        help="regex on the path with (?P<camera>...) and optionally (?P<start>YYYYmmddTHHMMSS[Z])"
        "; default understands .../<camera>/.../<camera>_<start>[_more].<ext>",
    ),
    timezone: str = typer.Option(
        "UTC", "--timezone", help="IANA zone (Europe/Paris) of start times in names without "
        "an offset (Z, +0200); recorded in the manifest"
    ),
    timeline: TimelineRule = "incident",
    enter: Enter = None,
    exit_: Exit = None,
    merge_gap: MergeGap = None,
    min_event: MinEvent = None,
    smooth: Smooth = None,
    truth: str | None = typer.Option(
        None, help="ground-truth events (Parquet/CSV: source_uri,label,start_s,end_s): print "
        "F1 of the scan's events at temporal IoU 0.3"
    ),
    decode_timeout: float = typer.Option(
        120.0, help="quarantine a file (error row) that leaves the decoder silent this many s, "
        "or crashes it, twice"
    ),
    clips: bool = typer.Option(
        False, "--clips", help="then cut a playable MP4 of every event into OUT/clips/ (the "
        "defaults of `avrl clips`)"
    ),
    rescan: bool = typer.Option(
        False, "--rescan", help="scan every source again and replace this model's results in "
        "OUT (needed when --window, --stride, --camera-pattern or --timezone differ from "
        "theirs)"
    ),
    cascade: bool = typer.Option(
        False, "--cascade", help="screen every window cheaply (the model file's calibrated "
        "screen: `avrl calibrate`) and decode and infer fully only the candidates; screened-out "
        "windows stay in the windows table with inferred = false"
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan; scan nothing"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Scan recordings for anomaly events; write Parquet timelines under OUT.

    Output: OUT/windows/date=D/camera=C/<key>.parquet, OUT/events/..., OUT/unreadable/...
    (stretches of a recording that could not be decoded), OUT/errors/<key>.parquet (nothing
    of the recording could be read), OUT/_scans/<scan_id>.json. Rerunning skips sources
    already done for this model; a rerun with other window settings is refused (pass
    --rescan to replace the results, or use another --out); `avrl retimeline OUT`
    re-applies --enter/--exit/... without decoding.

    Example: avrl scan s3://cams/2026/ --model model.avrl --out s3://cams-scans/ --segment 600
    """
    from avrl_batch.scan import ScanConfig, run_scan
    from avrl_batch.scan.timeline import timeline_from_options

    tl = timeline_from_options(
        timeline, enter=enter, exit=exit_, merge_gap_s=merge_gap, min_event_s=min_event,
        smooth_windows=smooth,
    )
    cfg = ScanConfig(
        source=source,
        model=model,
        out=out,
        window_s=window,
        stride_s=stride,
        segment_s=segment,
        include=tuple(include),
        exclude=tuple(exclude),
        endpoint_url=endpoint_url,
        actors=actors,
        gpus_per_actor=gpus_per_actor,
        batch_size=batch_size,
        writers=writers,
        wave=wave,
        address=address,
        dry_run=dry_run,
        camera_pattern=camera_pattern,
        timezone=timezone,
        decode_timeout_s=decode_timeout,
        timeline=tl,
        rescan=rescan,
        cascade=cascade,
    )
    if not dry_run:
        from avrl_batch.scan.sink import check_writable

        check_writable(out, endpoint_url=endpoint_url)  # before hours of decoding, not after
    if as_json:
        summary = run_scan(cfg)
    else:
        summary = _run_with_progress(cfg, run_scan)
    result = summary.to_dict()
    if truth and not dry_run:
        from avrl_batch.scan.matching import match_scan

        result["match"] = match_scan(summary, truth, endpoint_url=endpoint_url)
    if clips and not dry_run:
        from avrl_batch.clips import ClipSpec
        from avrl_batch.commands.clips import run_clips

        cut = run_clips(out, ClipSpec(), endpoint_url=endpoint_url, show_progress=not as_json)
        result["clips"] = cut.to_dict()
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
        return
    _print_summary(result)


def _run_with_progress(cfg: Any, run_scan: Any) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not Console().is_terminal:
        # a live bar draws nothing into a pipe or a log but leaves a stray empty line there
        return run_scan(cfg)
    with Progress(
        TextColumn("[bold]scan[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("sources  {task.fields[windows]} windows  {task.fields[rate]}"),
        TimeElapsedColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task("scan", total=None, windows=0, rate="")

        def on_progress(p: dict[str, Any]) -> None:
            elapsed = max(p["elapsed_s"], 1e-9)
            rate = f"{p['footage_s'] / elapsed:.1f} h footage / h"
            bar.update(
                task,
                completed=p["sources_done"],
                total=p["sources_total"],
                windows=p["windows"],
                rate=rate,
            )

        return run_scan(cfg, progress=on_progress)


def _print_summary(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # paths, camera ids, class names, ids and error messages are data, always printed as Text:
    # `[/x]` in any of them is not rich markup
    console = Console()
    if r["dry_run"]:
        plan = r["plan"]
        t = Table(title=Text(f"scan plan (model {r['model_id']}, nothing written)"))
        for col in ("source", "camera", "start", "duration s", "audio", "segments"):
            t.add_column(col)
        for s in plan.get("sources", []):
            t.add_row(
                Text(s["uri"]),
                Text(str(s["camera"])),
                Text(str(s["start_time"])),
                f"{s['duration_s']:.1f}" if s["duration_s"] is not None else "?",
                "yes" if s["has_audio"] else "no",
                str(s["segments"]),
            )
        console.print(t)
        console.print(
            f"to scan: {plan['sources_todo']} sources, {plan['segments']} segments, "
            f"{plan['footage_hours']:.3f} h; skipped (already done): {plan['sources_skipped']}; "
            f"probe errors: {plan['sources_failed_probe']}"
        )
        for s in plan.get("superseded", []):
            console.print(
                Text(f"  changed since scanned: {s['source_uri']}: the outputs of version "
                     f"{s['version']} will be replaced")
            )
        for e in plan.get("probe_errors", []):
            console.print(
                Text(f"  probe error: {e['uri']}: {e['error_type']}: {e['message']}")
            )
        return
    t = Table(title=Text(f"scan {r['scan_id']} (model {r['model_id']})"))
    t.add_column("")
    t.add_column("value", justify="right")
    t.add_row("sources listed", str(r["sources_listed"]))
    t.add_row("sources ok", str(r["sources_ok"]))
    if r.get("sources_partial"):
        t.add_row(
            "  of them with unreadable spans (avrl query OUT -t unreadable)",
            f"{r['sources_partial']} ({r['unreadable_spans']} spans, {r['unreadable_s']:.1f} s)",
        )
    t.add_row("sources failed", str(r["sources_failed"]))
    t.add_row("sources skipped (done before)", str(r["sources_skipped"]))
    if r.get("superseded"):
        t.add_row("old versions replaced (files changed)", str(len(r["superseded"])))
    if r.get("write_failures"):
        t.add_row("writes failed (redone by the next run)", str(len(r["write_failures"])))
    t.add_row("windows", str(r["windows"]))
    t.add_row("events", str(r["events"]))
    for label, n in r["events_by_label"].items():  # a model's class names are data too
        t.add_row(Text(f"  {label}"), str(n))
    t.add_row("footage scanned (h)", f"{r['footage_s'] / 3600:.3f}")
    t.add_row("wall time (s)", f"{r['wall_s']:.1f}")
    t.add_row("throughput (h footage / h)", f"{r['footage_hours_per_hour']:.1f}")
    for role, mb in r.get("peak_rss_mb", {}).items():
        t.add_row(f"peak RSS {role} (MiB)", f"{mb:.0f}")
    console.print(t)
    for e in r["errors"]:
        console.print(
            Text.assemble(
                ("failed", "red"),
                f" {e['source_uri']}: {e['stage']}: {e['error_type']}: {e['message']}",
            )
        )
    for w in r.get("write_failures", []):
        if w["what"].startswith("old version"):  # the sources' own failures are listed above
            console.print(
                Text.assemble(
                    ("not removed", "red"),
                    f" {w['what']} of {w['uri']}: {w['error_type']}: {w['message']}",
                )
            )
    if "match" in r:
        m = r["match"]
        console.print(
            f"events vs truth at IoU {m['iou']}: precision {m['precision']:.3f} "
            f"recall {m['recall']:.3f} F1 {m['f1']:.3f} (tp {m['tp']}, fp {m['fp']}, fn {m['fn']})"
        )
    if "clips" in r:
        c = r["clips"]
        console.print(
            f"clips: {c['written']} written, {c['present']} already there, {c['removed']} "
            f"removed, {len(c['failed'])} failed"
        )
        for f in c["failed"]:
            console.print(Text(f"  clip failed {f['event_id']}: {f['error']}"))
    if r["manifest"] is None and r.get("manifest_error"):
        console.print(Text(f"manifest not written: {r['manifest_error']}"))
    else:
        console.print(Text(f"manifest: {r['manifest']}"))
