"""The archive scan: plan, Ray Data pipeline, predictor actor, timeline, sink.

    from avrl_batch.scan import ScanConfig, run_scan
    summary = run_scan(ScanConfig(source="s3://cams/", model="model.avrl", out="scans/"))

Ray is imported only when a scan runs (pipeline.py, predictor.py).
"""

from avrl_batch.scan.pipeline import ScanSummary, run_scan
from avrl_batch.scan.plan import ScanConfig
from avrl_batch.scan.timeline import TimelineConfig

__all__ = ["ScanConfig", "ScanSummary", "TimelineConfig", "run_scan"]
