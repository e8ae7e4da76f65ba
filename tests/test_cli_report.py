"""`opensora-timeshift report DIR`: the telemetry reader, its figures, and its refusals of hostile input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from opensora_timeshift_patch.cli import main
from opensora_timeshift_patch.cli.report import FILE_NAME, by_bucket, interval_means, read_telemetry

FIXTURE = Path(__file__).parent / "data" / "telemetry_fixture.jsonl"  # the format's example line, 3 steps x 2 buckets
LINES = FIXTURE.read_text().splitlines()


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    shutil.copy(FIXTURE, d / FILE_NAME)
    return d


def write(run_dir, data):
    (run_dir / FILE_NAME).write_bytes(data if isinstance(data, bytes) else data.encode())


def fails(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def test_writes_three_pngs(run_dir, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["drawn_vs_configured.png", "loss_heatmap.png", "loss_latest.png"]
    for name in names:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interval_means_difference_cumulative_records(run_dir):
    """Cumulative count/sum per record: interval k's mean is (sum_k - sum_k-1) / (count_k - count_k-1), by hand."""
    _, records, note = read_telemetry(str(run_dir))
    assert note is None and len(records) == 6
    buckets = by_bucket(records)
    rs = buckets[(0, 720, 1280, 16)]
    steps, means = interval_means(rs)
    assert steps == [100, 200, 300]
    c = [json.loads(LINES[i]) for i in (1, 3, 5)]
    for k in range(3):
        dc = np.subtract(c[k]["count"], c[k - 1]["count"] if k else 0)
        ds = np.subtract(c[k]["sum"], c[k - 1]["sum"] if k else 0)
        assert means[k] == pytest.approx(ds / dc)
    # the base bucket's intervals all have the first interval's mean (its sums scale with its counts)
    _, base = interval_means(buckets[(None, 256, 256, 51)])
    assert base[1] == pytest.approx(base[0]) and base[2] == pytest.approx(base[0])


def test_interval_with_no_count_is_nan(run_dir):
    r = json.loads(LINES[0])
    r2 = dict(r, step=200)
    write(run_dir, json.dumps(r) + "\n" + json.dumps(r2) + "\n")
    _, records, _ = read_telemetry(str(run_dir))
    _, means = interval_means(records)
    assert np.isnan(means[1]).all() and not np.isnan(means[0]).any()


def test_cut_last_line_is_skipped_with_a_note(run_dir, tmp_path, capsys):
    write(run_dir, "\n".join(LINES[:3]) + "\n" + LINES[3][:40])
    assert main(["report", str(run_dir), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert f"{FILE_NAME}:4: the last line is cut" in err


@pytest.mark.parametrize("content, needles", [
    ("", ["no telemetry records", "empty file"]),
    (LINES[0][:30], ["only line is cut"]),
    ("[1, 2]\n", [":1:", "a list, not a telemetry record"]),
    ('{"format": "other/1"}\n', [":1:", "'format' is \"other/1\""]),
    (b"\x89PNG\r\n\x1a\n\x00\xff\xfe\n", [":1:", "not UTF-8"]),
    (LINES[0] + "\nnot json\n" + LINES[1] + "\n", [":2:", "not JSON"]),
    (LINES[0] + "\n\n", [":2:", "empty line"]),
    (json.dumps(dict(json.loads(LINES[0]), step=True)) + "\n", [":1:", "'step'"]),
    (json.dumps(dict(json.loads(LINES[0]), drawn=[1, 2])) + "\n", [":1:", "'drawn'", "list of 4 integers"]),
    (json.dumps(dict(json.loads(LINES[0]), edges=[0, 500, 250, 750, 1000])) + "\n", [":1:", "increasing"]),
    (json.dumps(dict(json.loads(LINES[0]), sum=None)) + "\n", [":1:", "both null"]),
    (json.dumps(dict(json.loads(LINES[0]), count=[-1, 2, 3, 4])) + "\n", [":1:", "negative"]),
    (json.dumps(dict(json.loads(LINES[0]), height="256")) + "\n", [":1:", "'height'"]),
    (LINES[2] + "\n" + LINES[0] + "\n", [":2:", "step 100 after step 200", "line 1"]),
])
def test_hostile_telemetry_is_a_clean_error(run_dir, tmp_path, capsys, content, needles):
    write(run_dir, content)
    out = tmp_path / "o"
    fails(capsys, ["report", str(run_dir), "--out", str(out)], FILE_NAME, *needles)
    assert not out.exists()  # nothing written before every line is checked


def test_bad_paths_are_clean_errors(run_dir, tmp_path, capsys):
    fails(capsys, ["report", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], "does not exist")
    fails(capsys, ["report", str(run_dir / FILE_NAME), "--out", str(tmp_path / "o")], "is not a directory")
    (run_dir / FILE_NAME).unlink()
    fails(capsys, ["report", str(run_dir), "--out", str(tmp_path / "o")], FILE_NAME, "does not exist")
    (run_dir / FILE_NAME).mkdir()
    fails(capsys, ["report", str(run_dir), "--out", str(tmp_path / "o")], FILE_NAME, "is a directory")


def test_out_onto_the_input_is_refused(run_dir, capsys):
    before = (run_dir / FILE_NAME).read_bytes()
    fails(capsys, ["report", str(run_dir), "--out", str(run_dir / FILE_NAME)], "exists and is not a directory")
    fails(capsys, ["report", str(run_dir), "--out", ""], "--out is empty")
    assert (run_dir / FILE_NAME).read_bytes() == before


def test_reads_what_the_real_telemetry_writes(tmp_path, capsys):
    """End to end: the 1.x scheduler's telemetry file, read back by report; the interval means are the losses fed in
    (a constant loss per bucket), and a 2.0-shaped record (no counts) draws only drawn-vs-configured."""
    import torch

    from opensora_timeshift_patch import SCHEDULERS, build_module
    from standin.stubs import batch_meta

    run = tmp_path / "run"
    s = build_module(dict(type="rflow-timeshift", backend="standalone", timestep_rng="per_sample",
                          telemetry=dict(dir=str(run), bins=10, every=4)), SCHEDULERS)
    for step in range(8):
        frames, loss = (17, 0.25) if step % 2 else (9, 2.0)
        x = torch.randn(6, 4, 5 if step % 2 else 3, 4, 4)
        meta = batch_meta(6, 256, 256, frames)
        t = s.sample_timesteps(x, meta, step=step)
        height, width, num_frames = (v.double() for v in meta.values())
        s.telemetry.observe(t, torch.full((6,), loss), height, width, num_frames, tuple(x.shape[2:]), True)
        if (step + 1) % 4 == 0:
            s.telemetry.report(step + 1)
    _, records, note = read_telemetry(str(run))
    assert note is None and len(records) == 4
    buckets = by_bucket(records)
    assert sorted(b[3] for b in buckets) == [9, 17]
    for bucket, rs in buckets.items():
        steps, means = interval_means(rs)
        assert steps == [4, 8]
        finite = means[np.isfinite(means)]
        assert finite.size and np.allclose(finite, 2.0 if bucket[3] == 9 else 0.25)
    out = tmp_path / "figs"
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert len(list(out.iterdir())) == 3

    lines = (run / FILE_NAME).read_text().splitlines()
    two = [json.loads(line) for line in lines]
    for r in two:
        r.update(release="2.0", count=None, sum=None, sumsq=None, num_timesteps=1, rule=None,
                 edges=[e / 1000 for e in r["edges"]])
    write(run, "".join(json.dumps(r) + "\n" for r in two))
    out2 = tmp_path / "figs2"
    assert main(["report", str(run), "--out", str(out2)]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out2.iterdir()) == ["drawn_vs_configured.png"]
