"""`avrl feedback`: verdicts exported by the review page become an interval manifest."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from cliphelp import make_clip_out

from avrl_batch.cli import main


def _verdicts(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path.write_text("event_id,verdict,label\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    return path


def test_verdicts_become_labelled_intervals(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    expected = make_clip_out(tmp_path / "rec", str(out))
    v = _verdicts(tmp_path / "verdicts.csv", [
        ("cam01ev0", "confirmed", "shoot"), ("cam01ev1", "false_alarm", ""),
        ("cam02ev0", "other", "fight"),
    ])
    main(["feedback", str(out), str(v), "--out", str(tmp_path / "fb.csv"),
          "--normal-label", "calm"])
    assert "3 intervals (1 calm, 1 fight, 1 shoot)" in capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "fb.csv").open()))
    assert [(Path(r["source_uri"]).name[:5], r["label"], float(r["start_s"]), float(r["end_s"]))
            for r in rows] == [
        ("cam01", "shoot", *expected["cam01ev0"][:2]),
        ("cam01", "calm", *expected["cam01ev1"][:2]),
        ("cam02", "fight", *expected["cam02ev0"][:2]),
    ]
    assert all(Path(r["source_uri"]).exists() for r in rows)


@pytest.mark.parametrize(("rows", "normal", "message"), [
    ([("nope1", "confirmed", ""), ("cam01ev0", "confirmed", "")], "calm",
     "1 verdict(s) name events that are not in"),
    ([("cam01ev1", "false_alarm", "")], None, "name it with --normal-label"),
    ([("cam01ev0", "maybe", "")], "calm", "line 2: verdict must be one of"),
    ([("cam01ev0", "other", "")], "calm", "an 'other' verdict needs the label"),
    ([("cam01ev0", "confirmed", ""), ("cam01ev0", "false_alarm", "")], "calm",
     "event cam01ev0 has a second verdict"),
])
def test_bad_verdicts_are_one_line(tmp_path: Path, capsys, rows, normal, message) -> None:
    out = tmp_path / "out"
    make_clip_out(tmp_path / "rec", str(out))
    v = _verdicts(tmp_path / "verdicts.csv", rows)
    args = ["feedback", str(out), str(v), "--out", str(tmp_path / "fb.csv")]
    with pytest.raises(SystemExit) as exc:
        main([*args, *(["--normal-label", normal] if normal else [])])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not (tmp_path / "fb.csv").exists()


def test_feedback_manifest_is_training_input(ray_local: None, tmp_path: Path) -> None:
    """The manifest feedback writes is what `avrl prepare` reads: its intervals become
    window clips of the verdicts' labels (the false alarm's as the normal class)."""
    import json

    out = tmp_path / "out"
    make_clip_out(tmp_path / "rec", str(out))
    v = _verdicts(tmp_path / "verdicts.csv", [
        ("cam01ev0", "confirmed", "shoot"), ("cam01ev1", "false_alarm", ""),
        ("cam02ev0", "other", "fight"),
    ])
    fb, prepared = tmp_path / "fb.csv", tmp_path / "prepared"
    main(["feedback", str(out), str(v), "--out", str(fb), "--normal-label", "calm"])
    main(["prepare", str(fb), "--out", str(prepared), "--preset", "tiny", "--normal", "calm",
          "--clip-stride", "2"])
    meta = json.loads((prepared / "prepared.json").read_text())
    assert meta["class_names"] == ["calm", "fight", "shoot"]
    assert meta["normal_classes"] == ["calm"]
    clips = {label: sum(split.get(label, 0) for split in meta["counts"].values())
             for label in meta["class_names"]}
    assert all(n > 0 for n in clips.values()), meta["counts"]
