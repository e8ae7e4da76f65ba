"""results/results.json is strict JSON, and scripts/compare_policies.py writes it so: non-finite numbers as null."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


def strict_loads(text):
    """json.loads that refuses NaN, Infinity and -Infinity, as strict parsers (and jq) do."""
    return json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))


@pytest.fixture(scope="module")
def compare_policies():
    scripts = str(ROOT / "scripts")
    sys.path.insert(0, scripts)  # the script imports train_tiny from beside it
    try:
        spec = importlib.util.spec_from_file_location("compare_policies", ROOT / "scripts" / "compare_policies.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(scripts)
    return module


def test_committed_results_are_strict_json():
    text = (RESULTS / "results.json").read_text()
    results = strict_loads(text)
    assert results == json.loads(text)  # nothing the lenient parser reads differently
    legacy_fd = [r["fd"] for r in results["runs"] if r["policy"] == "legacy"]
    assert legacy_fd and all(fd is None for fd in legacy_fd)  # the blown-up runs: null, not NaN


def test_committed_results_are_what_the_writer_writes(compare_policies):
    text = (RESULTS / "results.json").read_text()
    assert compare_policies.results_json(strict_loads(text)) == text


def test_committed_summary_and_table_follow_from_the_runs(compare_policies):
    results = strict_loads((RESULTS / "results.json").read_text())
    for key, summary in results["summary"].items():
        dataset, policy = key.split("/")
        mine = [r for r in results["runs"] if r["dataset"] == dataset and r["policy"] == policy]
        assert len(mine) == results["seeds"]
        for metric in ("heldout_loss", "fd", "t_zero_fraction"):
            again = compare_policies.summarise([r[metric] for r in mine])
            assert again.keys() == summary[metric].keys(), (key, metric)
            for name, value in again.items():
                expected = summary[metric][name]
                if value is None or expected is None:  # a non-finite run: no mean, no std
                    assert value is expected, (key, metric, name)
                else:
                    assert value == pytest.approx(expected, rel=1e-12), (key, metric, name)
        assert summary["nonfinite_runs"] == [r["nonfinite"] for r in mine]
    table = compare_policies.markdown(results["summary"], results["reference_fd"], results["seeds"])
    assert table == (RESULTS / "results.md").read_text()


def test_writer_turns_nan_and_inf_into_null(compare_policies):
    data = {"nan": math.nan, "inf": math.inf, "runs": [{"fd": -math.inf, "loss": 0.25}], "pair": (math.nan, 2),
            "nested": {"deeper": [[math.nan, 1.5]]}, "flag": True, "count": 3, "none": None, "word": "NaN",
            "zero": 0.0, "tiny": 5e-324, "big": 1.7976931348623157e308}
    text = compare_policies.results_json(data)
    assert strict_loads(text) == {"nan": None, "inf": None, "runs": [{"fd": None, "loss": 0.25}], "pair": [None, 2],
                                  "nested": {"deeper": [[None, 1.5]]}, "flag": True, "count": 3, "none": None,
                                  "word": "NaN", "zero": 0.0, "tiny": 5e-324, "big": 1.7976931348623157e308}
    assert "NaN," not in text and "Infinity" not in text
    assert data["nan"] != data["nan"] and data["pair"][0] != data["pair"][0]  # the input is left as it was


def test_summarise_reads_null_as_a_non_finite_run(compare_policies):
    assert compare_policies.summarise([0.5, None]) == {"mean": None, "std": None, "nonfinite_runs": 1}
    assert compare_policies.summarise([math.inf, 1.0]) == {"mean": None, "std": None, "nonfinite_runs": 1}
    assert compare_policies.summarise([0.5, 1.5]) == {"mean": 1.0, "std": 0.5}


@pytest.mark.parametrize("value", [object(), torch.tensor(1.0), {1.5}, b"bytes"])
def test_writer_refuses_what_json_cannot_hold(compare_policies, value):
    with pytest.raises(TypeError):  # no default hook: never silently null
        compare_policies.results_json({"runs": [{"fd": value}]})


def test_writer_fails_loudly_if_a_non_finite_value_slips_through(compare_policies, monkeypatch):
    monkeypatch.setattr(compare_policies, "finite_or_none", lambda value: value)  # a regression in the conversion
    with pytest.raises(ValueError):
        compare_policies.results_json({"fd": math.nan})
