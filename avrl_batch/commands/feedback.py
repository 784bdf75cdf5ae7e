"""``avrl feedback``: an analyst's verdicts on a scan's events -> an interval manifest."""

from __future__ import annotations

import typer

from avrl_batch.cli import app
from avrl_batch.commands.options import EndpointUrl


@app.command("feedback")
def feedback_cmd(
    out: str = typer.Argument(..., help="the scan output the verdicts are about"),
    verdicts: str = typer.Argument(..., help="verdicts.csv exported from `avrl report`"),
    manifest: str = typer.Option(
        ..., "--out", "-o", help="interval manifest to write (CSV: source_uri,label,start_s,end_s)"
    ),
    normal_label: str | None = typer.Option(
        None, help="the normal class false alarms become (e.g. normal1, or your own)"
    ),
    endpoint_url: EndpointUrl = None,
) -> None:
    """Turn verdicts into training data: a confirmed event becomes an interval of its label
    (or of the label given), a false alarm an interval of --normal-label, ready for
    `avrl prepare` and `avrl train --init`.

    Example: avrl feedback scans/ ~/Downloads/verdicts.csv --out feedback.csv --normal-label normal1
    """
    from collections import Counter

    from avrl_batch.feedback import feedback

    rows = feedback(out, verdicts, manifest, normal_label=normal_label,
                    endpoint_url=endpoint_url)
    counts = ", ".join(f"{n} {label}" for label, n in sorted(Counter(r.label for r in rows)
                                                             .items()))
    typer.echo(f"{len(rows)} intervals ({counts or 'none'}) -> {manifest}")
