"""Telemetry on Open-Sora 2.0: drawn versus configured only (2.0's train.py computes the loss itself)."""

import json
import warnings

import pytest
import torch

from opensora_timeshift_patch.opensora2 import Opensora2Timesteps
from opensora_timeshift_patch.telemetry import FILE_NAME
from test_opensora2_scripts import IMPORTS, run, root  # noqa: F401  (root: the module's fixture)


def feed(tmp_path, draw, steps=300, batch=16):
    ts = Opensora2Timesteps(telemetry=dict(bins=20, every=steps, dir=str(tmp_path)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(steps):
            latent, pixel = ((9, 32, 32), (33, 256, 256)) if step % 2 else ((1, 48, 48), (1, 384, 384))
            ts.observe(ts.training_timesteps(draw(batch), latent, pixel), latent, pixel)
    records = [json.loads(line) for line in (tmp_path / FILE_NAME).read_text().splitlines()]
    return records, [str(w.message) for w in caught if "disagree" in str(w.message)]


def test_stock_draws_are_silent_and_records_have_no_losses(tmp_path):
    records, alarms = feed(tmp_path, lambda n: torch.sigmoid(torch.randn(n)))
    assert len(records) == 2 and alarms == []
    assert all(r["release"] == "2.0" and r["count"] is None and r["sum"] is None and r["samples"] == 2400
               and r["num_timesteps"] == 1 and r["edges"][-1] == 1.0 for r in records)
    assert {(r["height"], r["num_frames"]) for r in records} == {(256, 33), (384, 1)}


def test_a_draw_that_is_not_stocks_fires(tmp_path):
    records, alarms = feed(tmp_path, lambda n: torch.rand(n))  # uniform where the config says logit-normal
    assert all(r["check"]["alarm"] for r in records) and len(alarms) == 2


def test_through_2_0_train_py(root, tmp_path):  # noqa: F811
    config = IMPORTS + f"scheduler = dict(type='rflow-timeshift', telemetry=dict(every=1, dir={str(tmp_path)!r}))\n"
    _, code, err = run(root, "train.py", "telemetry", config)
    assert code == 0, err[-3000:]
    records = [json.loads(line) for line in (tmp_path / FILE_NAME).read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 2]  # one report per batch; the second holds both buckets
    assert [r["samples"] for r in records[1:]] == [2, 3] or [r["samples"] for r in records[1:]] == [3, 2]
