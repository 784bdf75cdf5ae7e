"""`avrl bench decode|audio-end|damaged|model|load|scan|cascade|baseline|footage|archive|
finalise`: throughput, memory, damage and bookkeeping figures.

Every figure is a median over --runs runs, carries the machine and its load, and ratios come
from variants measured in the same invocation, interleaved run by run (avrl_batch/bench/).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import typer

from avrl_batch.cli import app
from avrl_batch.commands.options import EndpointUrl

bench_app = typer.Typer(
    help=(
        "Benchmarks: decode vs the FFmpeg limit, model clips/s, scan hours/hour and memory, "
        "and the naive baseline.\n\nExample: avrl bench decode --runs 3"
    ),
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")

DEFAULT_WORK = Path("/tmp/avrl-bench")


def _ints(text: str, what: str, minimum: int = 1) -> tuple[int, ...]:
    from avrl_batch.errors import ConfigError

    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        vals = ()
    if not vals or min(vals) < minimum:
        kind = "positive integers" if minimum == 1 else f"integers of at least {minimum}"
        raise ConfigError(f"{what} must be {kind} separated by commas, got {text!r}")
    return vals


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _emit(doc: dict, as_json: bool, lines: list[str], save: Path | None) -> None:
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        save.write_text(json.dumps(doc, indent=2) + "\n")
    if as_json:
        typer.echo(json.dumps(doc))
        return
    m = doc["machine"]
    typer.echo(
        f"machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
        f"{m['memory_gib']} GiB; load avg 1 min {doc['load_avg_1m']['before']} -> "
        f"{doc['load_avg_1m']['after']}"
    )
    for line in lines:
        typer.echo(line)


def _footage(work: Path, kind: str, seconds: float) -> Path:
    from rich.console import Console

    from avrl_batch.bench.footage import footage_path, make_footage

    path = footage_path(work / "footage", kind, seconds)
    if not path.exists():
        Console(stderr=True).print(
            f"making {seconds:g} s of {kind} footage -> {path}", markup=False, highlight=False
        )
    return make_footage(work / "footage", kind, seconds)


def _copies(work: Path, src: Path, n: int) -> Path:
    """A folder holding ``n`` copies of ``src`` (distinct names = distinct sources)."""
    folder = work / "sources" / f"{src.stem}_x{n}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        dest = folder / f"cam{i + 1:02d}{src.suffix}"
        if not dest.exists():
            shutil.copyfile(src, dest)
    return folder


@bench_app.command("footage")
def footage_cmd(
    kind: str = typer.Argument(
        ..., help="h264-360p|h264-720p|h264-1080p|hevc-720p|hevc-1080p|mjpeg-720p|h264-96p|"
        "h264-120p|h264-32p"
    ),
    seconds: float = typer.Argument(60.0, help="Length of the recording."),
    work: Path = typer.Option(DEFAULT_WORK, "--work", help="Footage goes to WORK/footage."),
) -> None:
    """Make (or reuse) benchmark footage and print its path.

    Example: avrl bench footage h264-720p 60
    """
    typer.echo(str(_footage(work, kind, seconds)))


@bench_app.command("decode")
def decode_cmd(
    sources: list[Path] = typer.Argument(None, help="Video files; none: make the default set."),
    preset: str = typer.Option("small", "--preset", help="Window geometry of this preset."),
    runs: int = typer.Option(3, "--runs", min=1),
    threads: str = typer.Option("1", "--threads", help="Cores (= decoder threads), e.g. 1,2"),
    seconds: float = typer.Option(
        60.0, "--seconds", help="Length of made 720p footage (1080p/HEVC: half)."
    ),
    work: Path = typer.Option(DEFAULT_WORK, "--work"),
    as_json: bool = typer.Option(False, "--json"),
    save: Path = typer.Option(None, "--save", help="Also write the JSON document here."),
) -> None:
    """Windowed frame + audio decode vs a full decode (the limit), per codec and resolution.

    Example: avrl bench decode --runs 3 --threads 1,2
    """
    from avrl_batch.bench import decode
    from avrl_batch.bench.footage import DECODE_KINDS

    files = list(sources or [])
    if not files:
        files = [
            _footage(work, k, seconds if k.endswith("720p") else seconds / 2) for k in DECODE_KINDS
        ]
    doc = decode.bench_decode(files, preset=preset, runs=runs, threads=_ints(threads, "--threads"))
    _emit(doc, as_json, decode.table(doc), save)


@bench_app.command("audio-end")
def audio_end_cmd(
    source: Path = typer.Argument(None, help="A video file with audio; none: make footage."),
    audio_end: float = typer.Option(
        20.0, "--audio-end", help="Where the cut copy's audio stops (s)."
    ),
    segment: float = typer.Option(10.0, "--segment", help="Segment length, as scan --segment."),
    preset: str = typer.Option("small", "--preset", help="Window geometry of this preset."),
    runs: int = typer.Option(3, "--runs", min=1),
    threads: int = typer.Option(1, "--threads", min=1, help="Cores (= decoder threads)."),
    seconds: float = typer.Option(60.0, "--seconds", help="Length of made 720p footage."),
    work: Path = typer.Option(DEFAULT_WORK, "--work"),
    as_json: bool = typer.Option(False, "--json"),
    save: Path = typer.Option(None, "--save", help="Also write the JSON document here."),
) -> None:
    """Decode cost of a recording whose audio ends early vs the same one with full audio.

    Example: avrl bench audio-end --audio-end 20 --seconds 60 --segment 10
    """
    from avrl_batch.bench import audio_end as bench_audio_end

    src = source or _footage(work, "h264-720p", seconds)
    doc = bench_audio_end.bench_audio_end(
        src, audio_end_s=audio_end, preset=preset, segment_s=segment, runs=runs, threads=threads
    )
    _emit(doc, as_json, bench_audio_end.table(doc), save)


@bench_app.command("damaged")
def damaged_cmd(
    source: Path = typer.Argument(
        None, help="An MP4 to damage a copy of; none: make an hour of 160x120 footage."
    ),
    fraction: float = typer.Option(
        0.005, "--fraction", help="Share of the bytes destroyed, centred on the middle."
    ),
    seconds: float = typer.Option(3600.0, "--seconds", help="Length of made footage."),
    preset: str = typer.Option("tiny", "--preset", help="Random model of this preset."),
    segment: float = typer.Option(300.0, "--segment", help="Scan segment seconds."),
    workers: int = typer.Option(2, "--workers", min=1, help="Decode workers."),
    work: Path = typer.Option(DEFAULT_WORK, "--work"),
    as_json: bool = typer.Option(False, "--json"),
    save: Path = typer.Option(None, "--save", help="Also write the JSON document here."),
) -> None:
    """Scan a recording with a bad sector in the middle: share kept as windows, spans reported.

    Example: avrl bench damaged --fraction 0.005 --seconds 3600
    """
    from avrl_batch.bench import damaged
    from avrl_batch.errors import ConfigError

    if not 0 < fraction < 1:
        raise ConfigError(f"--fraction must be between 0 and 1, got {fraction}")
    src = source or _footage(work, "h264-120p", seconds)
    doc = damaged.bench_damaged(
        src, work / "damaged", fraction=fraction, preset=preset, segment_s=segment,
        workers=workers,
    )
    _emit(doc, as_json, damaged.table(doc), save)


@bench_app.command("model")
def model_cmd(
    presets: str = typer.Option("tiny,small,paper", "--presets"),
    fusions: str = typer.Option(
        "concat", "--fusions", help="e.g. concat,concat_ln,concat_um,add,lf"
    ),
    batch_sizes: str = typer.Option("1,8", "--batch-sizes"),
    paper_batch_sizes: str = typer.Option(
        "1", "--paper-batch-sizes", help="The paper model takes seconds per clip on a CPU."
    ),
    variants: str = typer.Option(
        None,
        "--variants",
        help="'+'-joined fp32|fp16|bf16|cl|compile, comma-separated; default per device.",
    ),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N | auto"),
    runs: int = typer.Option(3, "--runs", min=1),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads (default: all)."),
    min_run_s: float = typer.Option(
        0.5, "--min-run-s", help="A run repeats the batch until it lasts this long."
    ),
    as_json: bool = typer.Option(False, "--json"),
    save: Path = typer.Option(None, "--save"),
) -> None:
    """Clips/s and GFLOPs/s per preset, fusion, batch size and precision/layout variant.

    Example: avrl bench model --device cuda --variants fp32,fp16,bf16+cl,fp16+cl+compile
    """
    from avrl_batch.bench import model

    doc = model.bench_model(
        presets=_names(presets),
        fusions=_names(fusions),
        batch_sizes=_ints(batch_sizes, "--batch-sizes"),
        paper_batch_sizes=_ints(paper_batch_sizes, "--paper-batch-sizes"),
        variants=_names(variants) if variants else None,
        device=device,
        runs=runs,
        threads=threads,
        min_run_s=min_run_s,
    )
    lines = model.table(doc) + [
        f"median speed-up over fp32: {doc['median_speedup_by_variant']}",
        f"helped (> 1.05x): {', '.join(doc['helped']) or 'none'}",
    ]
    _emit(doc, as_json, lines, save)


@bench_app.command("load")
def load_cmd(
    presets: str = typer.Option("tiny,small,paper", "--presets"),
    runs: int = typer.Option(3, "--runs", min=1),
    work: Path = typer.Option(DEFAULT_WORK, "--work", help="Where the model files are made."),
    as_json: bool = typer.Option(False, "--json"),
    save: Path = typer.Option(None, "--save"),
) -> None:
    """Peak memory and seconds of loading a model file, from bytes (scan actors) and from a
    file (evaluate), each load in a fresh process.

    Example: avrl bench load --presets small,paper --runs 3
    """
    from avrl_batch.bench import load

    doc = load.bench_load(presets=_names(presets), runs=runs, work=work)
    _emit(doc, as_json, load.table(doc), save)


@bench_app.command("scan")
def scan_cmd(
    sources: list[Path] = typer.Argument(
        None, help="Each is scanned on its own; none: 3 copies of 60 s of 720p H.264."
    ),
    preset: str = typer.Option("small", "--preset", help="Random model of this preset."),
    workers: str = typer.Option("1,2", "--workers", help="Decode workers (= cores), e.g. 1,2"),
    runs: int = typer.Option(3, "--runs", min=1),
    segment: float = typer.Option(None, "--segment", help="Scan segment seconds."),
    batch_size: int = typer.Option(None, "--batch-size"),
    memory: bool = typer.Option(
        False,
        "--memory",
        help="Scan a 5-minute and a 60-minute low-resolution recording (peak memory figure).",
    ),
    many: int = typer.Option(
        0, "--many", min=0, help="Also scan N 2-s 96p files and one 96p file as long as all "
        "of them: the scan's overhead per source (the difference, per file)."
    ),
    work: Path = typer.Option(DEFAULT_WORK, "--work"),
    as_json: bool = typer.Option(False, "--json"),
    save: Path = typer.Option(None, "--save"),
) -> None:
    """End-to-end scan hours of footage per hour with 1 and 2 workers, and peak worker memory.

    Example: avrl bench scan --memory --workers 2 --runs 3
    Example: avrl bench scan --many 2000 --preset tiny --workers 2 --runs 1
    """
    from avrl_batch.bench import scan

    srcs: list[Path] = list(sources or [])
    if memory:
        srcs += [_footage(work, "h264-96p", 300.0), _footage(work, "h264-96p", 3600.0)]
    if many:
        srcs += [_copies(work, _footage(work, "h264-96p", 2.0), many),
                 _footage(work, "h264-96p", 2.0 * many)]
    if not srcs:
        srcs = [_copies(work, _footage(work, "h264-720p", 60.0), 3)]
    doc = scan.bench_scan(
        srcs,
        preset=preset,
        workers=_ints(workers, "--workers"),
        runs=runs,
        work=work / "work",
        segment_s=segment,
        batch_size=batch_size,
    )
    if many:
        doc["many_short"] = scan.overhead_per_source(doc, many)
    lines = scan.table(doc)
    if many:
        o = doc["many_short"]
        lines.append(
            f"{many} 2-s files vs one {2 * many:g}-s file ({o['workers']} workers): overhead "
            f"{o['wall_ms_per_source']} ms wall, {o['cpu_ms_per_source']} CPU-ms per source"
        )
    for r in doc["results"]:
        if "scaling" in r:
            lines.append(
                f"{Path(r['source']).name}: {r['scaling']['workers'][1]} vs "
                f"{r['scaling']['workers'][0]} workers = {r['scaling']['ratio']:.2f}x"
            )
    if "memory" in doc:
        mem = doc["memory"]
        lines.append(
            f"peak decode worker memory, longest / shortest recording: "
            f"{mem['ratio_decode_worker']}x (any worker: {mem['ratio_worker_max']}x)"
        )
    _emit(doc, as_json, lines, save)


@bench_app.command("cascade")
def cascade_cmd(
    model: Path = typer.Argument(..., help="A trained model file (its screen is recalibrated)."),
    work: Path = typer.Option(DEFAULT_WORK / "cascade", "--work",
                              help="footage (made once), outputs"),
    seed: int = typer.Option(0, "--seed", help="seed of the measured footage"),
    minutes: float = typer.Option(3.0, "--minutes", help="length of each measured recording"),
    calib_seeds: str = typer.Option(
        "4,5,6,7", "--calib-seeds", help="seeds of the calibration footage (3 recordings "
        "each; scripts/cascade_model.sh trains its model on seeds 1-3)"),
    calib_minutes: float = typer.Option(3.0, "--calib-minutes",
                                        help="length of each calibration recording"),
    recall: float = typer.Option(0.97, "--recall",
                                 help="the screen's target recall (of what: --recall-of)"),
    per_class: bool = typer.Option(True, "--per-class/--pooled",
                                   help="the target recall for each anomaly class, or pooled"),
    recall_of: str = typer.Option("events", "--recall-of",
                                  help="what the target recall counts: events or windows"),
    margin: int = typer.Option(1, "--margin", help="windows decoded each side of a candidate"),
    workers: int = typer.Option(2, "--workers", min=1,
                                help="scan decode workers, and processes making footage"),
    runs: int = typer.Option(1, "--runs", min=1),
    as_json: bool = typer.Option(False, "--json"),
    save: Path = typer.Option(None, "--save"),
) -> None:
    """Full scan vs `avrl scan --cascade` on the `cascade` synth footage (720p 25 fps, ~5 %
    of the time in events, one camera without audio): footage per CPU-second, event recall
    and precision against the ground truth, side by side in one run.

    Footage is made once under --work (~15 ms a 720p frame on one core, most of it x264:
    3 recordings of 10 minutes take ~7 minutes with 2 workers).

    Example: avrl bench cascade run/model.avrl --json

    Example: avrl bench cascade run/model.avrl --minutes 10 --calib-minutes 5 --json

    Example (the documented figures: the model of scripts/cascade_model.sh):
    avrl bench cascade cascade-model/ft/model.avrl --minutes 30 --calib-minutes 6 --runs 3 --json
    """
    from avrl_batch.bench import cascade

    doc = cascade.bench_cascade(
        model, work=work, seed=seed, minutes=minutes,
        calib_seeds=_ints(calib_seeds, "--calib-seeds", minimum=0),
        calib_minutes=calib_minutes, recall=recall, per_class=per_class, recall_of=recall_of,
        margin=margin,
        workers=workers, runs=runs,
    )
    _emit(doc, as_json, cascade.table(doc), save)


@bench_app.command("baseline")
def baseline_cmd(
    source: Path = typer.Argument(None, help="Folder of recordings; none: 3 x 60 s of 720p."),
    preset: str = typer.Option("small", "--preset"),
    runs: int = typer.Option(3, "--runs", min=1),
    workers: int = typer.Option(None, "--workers", help="Scan decode workers (default: cores)."),
    segment: float = typer.Option(None, "--segment"),
    work: Path = typer.Option(DEFAULT_WORK, "--work"),
    as_json: bool = typer.Option(False, "--json"),
    save: Path = typer.Option(None, "--save"),
) -> None:
    """Naive research-code scan (whole file in memory, clip by clip) vs avrl scan, same files
    and model: speed-up and memory ratio.

    Example: avrl bench baseline --preset small --runs 3
    """
    from avrl_batch.bench import baseline

    src = source or _copies(work, _footage(work, "h264-720p", 60.0), 3)
    doc = baseline.bench_baseline(
        src, preset=preset, runs=runs, workers=workers, work=work / "work", segment_s=segment
    )
    _emit(doc, as_json, baseline.table(doc), save)


@bench_app.command("show")
def show_cmd(
    documents: list[Path] = typer.Argument(..., help="JSON files written by --save."),
) -> None:
    """Print the markdown tables of saved benchmark documents (for the README).

    Example: avrl bench show /tmp/avrl-bench/results/*.json
    """
    from avrl_batch.bench import baseline, cascade, decode, finalise, load, model, scan
    from avrl_batch.errors import ConfigError

    tables = {
        "decode": decode.table,
        "model": model.table,
        "load": load.table,
        "scan": scan.table,
        "baseline": baseline.table,
        "cascade": cascade.table,
        "finalise": finalise.table,
    }
    for path in documents:
        try:
            doc = json.loads(path.read_text())
            render = tables[doc["bench"]]
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"{path} is not a benchmark document written by --save") from exc
        typer.echo(f"\n{path.name}: {doc['bench']}, {doc['utc']}")
        _emit(doc, False, render(doc), None)


@bench_app.command("archive")
def archive_cmd(
    sources: int = typer.Option(1000, "--sources", min=1, help="Recordings in the archive."),
    cameras: int = typer.Option(100, "--cameras", min=1, help="Cameras they are spread over."),
    work: Path = typer.Option(DEFAULT_WORK, "--work", help="The archive goes to WORK/archive-N."),
    compact: bool = typer.Option(
        True, "--compact/--no-compact",
        help="then compact the output and measure the rerun and the queries again",
    ),
    as_json: bool = typer.Option(False, "--json"),
    save: Path = typer.Option(None, "--save"),
) -> None:
    """Bookkeeping and query costs of a finished archive of N recordings (generated outputs):
    list + plan time, the no-op rerun (time, driver peak memory, storage calls) and query time
    for one camera-day vs everything; with --compact (default) the same after `avrl compact`,
    whose query results must be the same.

    Example: avrl bench archive --sources 10000
    """
    from avrl_batch.bench import archive
    from avrl_batch.bench.report import envelope, load_average

    load = load_average()
    where = work / f"archive-{sources}-{cameras}"
    info = archive.make_archive(where, sources, cameras)
    plan = archive.plan_time(info)
    rerun = archive.noop_rerun(info)
    query = archive.query_times(info)
    result: dict[str, Any] = {"archive": dict(info), "plan": plan, "noop_rerun": rerun,
                              "query": query}
    lines = [
        f"archive: {sources} sources, {cameras} cameras, {info['days']} days "
        f"(generated in {info['generate_s']} s)",
        f"list + plan: {plan['list_plan_s']} s (listing the sources {plan['list_s']} s); "
        f"{plan['skipped']} finished, {plan['todo']} to do",
        *_archive_lines("", rerun, query),
    ]
    if compact:
        done = archive.compact_archive(info, where)
        after = {"noop_rerun": archive.noop_rerun(info), "query": archive.query_times(info)}
        same = all(after["query"][w][t]["digest"] == query[w][t]["digest"]
                   for w in ("camera_day", "all") for t in ("events", "windows"))
        result["compact"] = {**done, **after, "same_results": same}
        lines += [
            f"compact: {done['wall_s']} s, {done['sources_compacted']} sources, files "
            f"{done['before']['files']} -> {done['after']['files']}, at most "
            f"{done['before']['max_per_partition']} -> {done['after']['max_per_partition']} a "
            f"partition; query results {'the same' if same else 'DIFFERENT'}",
            *_archive_lines("after compaction: ", after["noop_rerun"], after["query"]),
        ]
    doc = envelope("archive", result, load_before=load)
    _emit(doc, as_json, lines, save)


def _archive_lines(prefix: str, rerun: dict[str, Any], q: dict[str, Any]) -> list[str]:
    lines = [
        f"{prefix}no-op rerun: {rerun['wall_s']} s, driver peak {rerun['driver_peak_rss_mb']} "
        f"MiB, storage calls {rerun['storage_calls']}",
    ]
    for table in ("events", "windows"):
        one, every = q["camera_day"][table], q["all"][table]
        lines.append(
            f"{prefix}query {table}: one camera-day {one['s']} s ({one['rows']} rows), "
            f"everything {every['s']} s ({every['rows']} rows): "
            f"{every['s'] / max(one['s'], 1e-3):.1f}x"
        )
    return lines


@bench_app.command("finalise")
def finalise_cmd(
    out: str = typer.Option(str(DEFAULT_WORK / "finalise"), "--out",
                            help="where the outputs go (a folder or s3://bucket/prefix)"),
    sources: int = typer.Option(2000, "--sources", min=1),
    writers: str = typer.Option("0,8", "--writers",
                                help="writer-thread counts to compare (0: the driver writes)"),
    runs: int = typer.Option(1, "--runs", min=1),
    endpoint_url: EndpointUrl = None,
    as_json: bool = typer.Option(False, "--json"),
    save: Path = typer.Option(None, "--save"),
) -> None:
    """Finished sources the scan's driver writes per second (timeline, windows and events
    objects, ledger), from a model that costs nothing, for each writer-thread count.

    Example: avrl bench finalise --out s3://bench/finalise --endpoint-url http://127.0.0.1:5000
    """
    from avrl_batch.bench import finalise

    doc = finalise.bench_finalise(
        out, sources=sources, writers=_ints(writers, "--writers", minimum=0), runs=runs,
        endpoint_url=endpoint_url,
    )
    _emit(doc, as_json, finalise.table(doc), save)
