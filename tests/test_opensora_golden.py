"""The standalone backend against numbers recorded from the real Open-Sora 1.2, 1.3 and 2.0 code.

``tests/data/opensora_golden.json`` is written by ``scripts/check_against_opensora.py --checkout <1.2> --checkout
<1.3> --checkout <2.0> --write-goldens`` from the real code (torch 2.5.1), and only when every check passed: stock
``rflow``'s training timesteps and losses and its sampling schedules, from fixed seeds on the stub model of
``standin.stubs``, and 2.0's shift, schedules and train.py draws. Reproducing them here shows the policy and the
rectified-flow conventions match stock without Open-Sora installed. The ``frames16`` policy, which stock has no
counterpart for, is checked against its formula on the same RNG draws instead. Every number in the file is read by
a test (here or in ``test_opensora2.py``): :data:`READ_BY` says which, and a test keeps it so.
"""

import ast
import inspect
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import opensora_timeshift_patch as ots
from standin.stubs import StubModel, batch_meta, latent_shape, run_sampling, run_training

GOLDEN_FILE = Path(__file__).parent / "data" / "opensora_golden.json"
GOLDEN = json.loads(GOLDEN_FILE.read_text())
RELEASES = [("opensora_1.2", "latent", True), ("opensora_1.3", "v13", False)]


def cases(section):
    return [(release, mode, scale_images, case) for release, mode, scale_images in RELEASES
            for case in GOLDEN[release][section]]


@pytest.mark.parametrize("release, mode, scale_images, case", cases("training"))
def test_training_timesteps_and_loss(release, mode, scale_images, case):
    n, h, w = case["num_frames"], case["height"], case["width"]
    x = torch.randn(*latent_shape(3, n), generator=torch.Generator().manual_seed(1))
    scheduler = ots.RFlowTimeShift(shift_mode=mode, sample_method=case["sample_method"], scale_images=scale_images)
    t, loss = run_training(scheduler, x, batch_meta(3, h, w, n), seed=0)
    assert t.tolist() == case["t"]
    torch.testing.assert_close(loss, torch.tensor(case["loss"]), rtol=1e-6, atol=0)


@pytest.mark.parametrize("release, mode, scale_images, case", cases("sampling"))
def test_sampling_schedule_and_output(release, mode, scale_images, case):
    n, h, w = case["num_frames"], case["height"], case["width"]
    z = torch.randn(*latent_shape(2, n), generator=torch.Generator().manual_seed(2))
    scheduler = ots.RFlowTimeShift(shift_mode=mode, num_sampling_steps=5)
    steps, out = run_sampling(scheduler, z, batch_meta(2, h, w, n))
    assert [s[0].item() for s in steps] == case["timesteps"]
    assert out.double().sum().item() == pytest.approx(case["z_sum"], rel=1e-6)


def test_stock_1_2_collapse_on_sixteen_frames_is_legacy_with_ignore():
    stock = GOLDEN["opensora_1.2"]["sixteen_frames"]
    assert stock["stock_training_t"] == [0.0] * 4 and not stock["stock_sample_finite"]
    x = torch.randn(*latent_shape(4, 16), generator=torch.Generator().manual_seed(3))
    replay = ots.RFlowTimeShift(shift_mode="legacy", on_degenerate="ignore", num_sampling_steps=5)
    t, _ = run_training(replay, x, batch_meta(4, 256, 256, 16), seed=0)
    assert t.tolist() == stock["stock_training_t"]
    steps, z = run_sampling(replay, x[:2], batch_meta(2, 256, 256, 16))
    got = [s[0].item() for s in steps]
    assert str(got) == str(stock["stock_sampling_t"])  # [nan, 0.0, ...]: NaN != NaN, so compare the text
    assert not bool(z.isfinite().all())


def stock_draws(sample_method, batch, seed):
    """The unshifted t / 1000 that Open-Sora 1.2's ``rflow`` draws from ``torch.manual_seed(seed)``, as floats.

    ``uniform``: ``torch.rand((B,)) * num_timesteps``. ``logit-normal``: ``LogisticNormal(0, 1).sample((B,))[:, 0]
    * num_timesteps``; with one logit, the stick-breaking transform is the logistic sigmoid of a ``randn`` draw.
    """
    torch.manual_seed(seed)
    if sample_method == "uniform":
        return torch.rand(batch).tolist()
    return [1 / (1 + math.exp(-z)) for z in torch.randn(batch, 1)[:, 0].tolist()]


# (height, width, num_frames). The first is the 16-frame case stock 1.2 collapses on (its a is exactly 1, so the
# shifted t are the draws themselves); the others move a away from 1, and 32 and 51 frames tell frames16's T_eff
# (8 and 12) apart from latent's (9 and 15) and legacy's (5 and 15).
FRAMES16_CASES = [(256, 256, 16), (512, 512, 16), (720, 1280, 16), (720, 1280, 32), (480, 854, 51)]


@pytest.mark.parametrize("sample_method", ["uniform", "logit-normal"])
@pytest.mark.parametrize("height, width, num_frames", FRAMES16_CASES)
def test_frames16_training_timesteps_follow_the_formula(height, width, num_frames, sample_method):
    """frames16's training timesteps, derived by hand from the shift formula on the stock RNG draws."""
    batch, seed = 4, 0
    t_eff = num_frames // 16 * 4  # the maintainers' fix for 16-frame data (Open-Sora issue #601)
    a = math.sqrt(height * width / 512**2) * math.sqrt(t_eff)
    expected = [a * u / (1 + (a - 1) * u) * 1000 for u in stock_draws(sample_method, batch, seed)]
    assert all(0 < t < 1000 for t in expected)  # real noise levels (stock 1.2 trains 16-frame clips at t = 0)

    x = torch.randn(*latent_shape(batch, num_frames), generator=torch.Generator().manual_seed(3))
    scheduler = ots.RFlowTimeShift(shift_mode="frames16", sample_method=sample_method)
    t, _ = run_training(scheduler, x, batch_meta(batch, height, width, num_frames), seed=seed)
    assert t.dtype == torch.float32
    # The expectation is float64 arithmetic; the scheduler computes in float32 as Open-Sora does (the sigmoid of
    # the logit-normal draw, times 1000, over 1000, the factor a, the shift's multiply, add and divide, times 1000),
    # each step rounding by up to half a float32 ulp. That stays under one float32 epsilon relative here; 4 leave
    # room. T_eff off by one moves t by over 10^5 epsilons, so this is as discriminating as an exact comparison.
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(t.double(), torch.tensor(expected, dtype=torch.float64), rtol=4 * eps, atol=0)


def test_stock_1_3_on_sixteen_frames_is_v13():
    stock = GOLDEN["opensora_1.3"]["sixteen_frames"]
    x = torch.randn(*latent_shape(4, 16), generator=torch.Generator().manual_seed(3))
    scheduler = ots.RFlowTimeShift(shift_mode="v13", num_sampling_steps=5)
    t, _ = run_training(scheduler, x, batch_meta(4, 256, 256, 16), seed=0)
    assert t.tolist() == stock["stock_training_t"]
    steps, z = run_sampling(scheduler, x[:2], batch_meta(2, 256, 256, 16))
    assert [s[0].item() for s in steps] == stock["stock_sampling_t"]
    assert stock["stock_sample_finite"] and bool(z.isfinite().all())  # 1.3's rule does not collapse at 16 frames


V13_FLAGS = GOLDEN["opensora_1.3"]["v13_flags"]


def test_v13_scale_temporal_false_ignores_transform_scale_as_stock():
    """Stock 1.3 treats a scale_temporal=False batch as images: a = sqrt(720 * 1280 / 512^2) = 1.875, no scale."""
    z = torch.randn(*latent_shape(2, 51), generator=torch.Generator().manual_seed(2))
    with pytest.warns(UserWarning, match="transform_scale=2.0 does not apply"):
        scheduler = ots.RFlowTimeShift(num_sampling_steps=4, transform_scale=2.0, scale_temporal=False)
    steps, _ = run_sampling(scheduler, z, batch_meta(2, 720, 1280, 51))
    got = [s[0].item() for s in steps]
    assert got == V13_FLAGS["scale_temporal_false_sampling_t"]
    a = 1.875
    assert got == pytest.approx([1000 * a * t / (1 + (a - 1) * t) for t in (1, 0.75, 0.5, 0.25)], rel=1e-6)


@pytest.mark.parametrize("n", [1, 51])
def test_v13_uniform_over_threshold_consumes_the_rng_as_stock(n):
    """Stock draws the redraw uniforms for video batches only: t and every later random number agree with it."""
    x = torch.randn(*latent_shape(3, n), generator=torch.Generator().manual_seed(1))
    scheduler = ots.RFlowTimeShift(shift_mode="v13", scale_images=False, uniform_over_threshold=0.5)
    t, _ = run_training(scheduler, x, batch_meta(3, 512, 512, n), seed=0)
    want = V13_FLAGS[f"uniform_over_threshold_{n}f"]
    assert t.tolist() == want["t"] and torch.rand(2).tolist() == want["next_rand"]


def test_v13_train_call_keywords_on_the_standalone_backend():
    """1.3's train.py passes model_args, mask_index=[], x_gt, noise_disable_threshold, text_uncond_prob, x_noisy_ref."""
    x = torch.randn(*latent_shape(3, 17), generator=torch.Generator().manual_seed(1))
    x_gt = torch.randn(*latent_shape(3, 17), generator=torch.Generator().manual_seed(4))
    before = x.clone()
    torch.manual_seed(0)
    loss = ots.RFlowTimeShift(shift_mode="v13", backend="standalone").training_losses(
        StubModel(), x, model_args=batch_meta(3, 256, 256, 17), mask=None, mask_index=[], x_gt=x_gt,
        noise_disable_threshold=500, text_uncond_prob=0.0, x_noisy_ref=x)["loss"]
    torch.testing.assert_close(loss, torch.tensor(V13_FLAGS["train_call_loss"]), rtol=1e-6, atol=0)
    assert torch.equal(x, before)  # stock writes x_gt into x_start in place; this backend leaves the batch alone


def test_v13_conditioning_on_the_standalone_backend_is_refused_briefly():
    x = torch.randn(*latent_shape(2, 17))
    with pytest.raises(ValueError) as err:
        ots.RFlowTimeShift(backend="standalone").training_losses(
            StubModel(), x, batch_meta(2, 256, 256, 17), mask_index=[0], x_noisy_ref=x)
    assert "mask_index=[0]" in str(err.value) and "backend='opensora'" in str(err.value)
    assert len(str(err.value)) < 300 and "tensor(" not in str(err.value)


# --- Open-Sora 2.0's train.py on the real package ----------------------------------------------------------

def test_2_0_train_py_stock_draws_are_2_0_rule_by_hand():
    """The real 2.0 package's draws in tests/fake_opensora.py's TRAIN_2 (shaped as 2.0's train.py, fp32, 2.0's
    default seed 1024), one batch per bucket (batch size, frames, height, width): sigmoid(randn(bs)), shifted by
    alpha = lin((h w) // 4 latent tokens; 256 -> 1, 4096 -> 3) * sqrt(1 + (n - 1) // 4), bit for bit."""
    buckets = GOLDEN["opensora_2.0"]["train_script_buckets"]
    records = GOLDEN["opensora_2.0"]["train_script_stock_t"]
    assert len(records) == len(buckets) > 0
    torch.manual_seed(1024)
    slope = 2 / 3840
    for step, (record, (bs, n, h, w)) in enumerate(zip(records, buckets)):
        u = torch.sigmoid(torch.randn(bs))
        alpha = slope * ((h // 8) * (w // 8) // 4) + (1 - slope * 256)
        alpha *= math.sqrt(1 + (n - 1) // 4)
        assert (record["epoch"], record["step"]) == (0, step)
        assert record["t"] == (alpha * u / (1 + (alpha - 1) * u)).tolist()


# --- the file: written by the script, every number read -----------------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"
RELEASE_SECTIONS = ("opensora_1.2", "opensora_1.3", "opensora_2.0")


def test_the_file_is_the_script_output_for_every_release():
    """One section per release, in the order and format ``--write-goldens`` writes (a hand edit shows)."""
    assert list(GOLDEN) == list(RELEASE_SECTIONS)
    assert GOLDEN_FILE.read_text() == json.dumps(GOLDEN, indent=1) + "\n"


def test_provenance_matches_the_readme():
    """Each section says which release and torch it came from and how many checks passed there; the README's
    section on the check says the same."""
    readme = README.read_text(encoding="utf-8")
    section = readme[readme.index("## Verified against Open-Sora"):]
    section = section[:section.index("\n## ", 1)]
    for name in RELEASE_SECTIONS:
        golden = GOLDEN[name]
        assert name == f"opensora_{golden['version']}"
        assert f"torch {golden['torch'].split('+')[0]}" in section
        assert f"{golden['checks']} checks" in section, (name, golden["checks"])


def test_write_goldens_needs_every_release_and_a_real_checkout(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "check_against_opensora.py"
    alone = subprocess.run([sys.executable, str(script), "--write-goldens", str(tmp_path / "g.json")],
                           capture_output=True, text=True)
    assert alone.returncode == 2 and "--write-goldens needs --checkout for each of Open-Sora 1.2, 1.3, 2.0" in \
        alone.stderr
    empty = subprocess.run([sys.executable, str(script), "--checkout", str(tmp_path), "--write-goldens",
                            str(tmp_path / "g.json")], capture_output=True, text=True)
    assert empty.returncode == 2 and "no opensora package in it" in empty.stderr
    assert not (tmp_path / "g.json").exists()


# Which test reads each number of the file: a path of keys, "*" for every entry of a list. A list of numbers is
# one number here.
READ_BY = {
    "opensora_*/version": ["test_provenance_matches_the_readme"],
    "opensora_*/torch": ["test_provenance_matches_the_readme"],
    "opensora_*/checks": ["test_provenance_matches_the_readme"],
    "opensora_1.*/training/*/sample_method": ["test_training_timesteps_and_loss"],
    "opensora_1.*/training/*/num_frames": ["test_training_timesteps_and_loss"],
    "opensora_1.*/training/*/height": ["test_training_timesteps_and_loss"],
    "opensora_1.*/training/*/width": ["test_training_timesteps_and_loss"],
    "opensora_1.*/training/*/t": ["test_training_timesteps_and_loss"],
    "opensora_1.*/training/*/loss": ["test_training_timesteps_and_loss"],
    "opensora_1.*/sampling/*/num_frames": ["test_sampling_schedule_and_output"],
    "opensora_1.*/sampling/*/height": ["test_sampling_schedule_and_output"],
    "opensora_1.*/sampling/*/width": ["test_sampling_schedule_and_output"],
    "opensora_1.*/sampling/*/timesteps": ["test_sampling_schedule_and_output"],
    "opensora_1.*/sampling/*/z_sum": ["test_sampling_schedule_and_output"],
    "opensora_1.2/sixteen_frames/*": ["test_stock_1_2_collapse_on_sixteen_frames_is_legacy_with_ignore"],
    "opensora_1.3/sixteen_frames/*": ["test_stock_1_3_on_sixteen_frames_is_v13"],
    "opensora_1.3/v13_flags/scale_temporal_false_sampling_t":
        ["test_v13_scale_temporal_false_ignores_transform_scale_as_stock"],
    "opensora_1.3/v13_flags/uniform_over_threshold_*/*": ["test_v13_uniform_over_threshold_consumes_the_rng_as_stock"],
    "opensora_1.3/v13_flags/train_call_loss": ["test_v13_train_call_keywords_on_the_standalone_backend"],
    "opensora_2.0/alpha/*/*": ["test_opensora2:test_no_settings_give_2_0_training_alpha_bit_for_bit"],
    "opensora_2.0/time_shift/*/*": ["test_opensora2:test_no_settings_shift_as_2_0_time_shift"],
    "opensora_2.0/schedules/*/*": ["test_opensora2:test_no_settings_give_2_0_inference_schedule"],
    "opensora_2.0/train_script_buckets/*": ["test_2_0_train_py_stock_draws_are_2_0_rule_by_hand"],
    "opensora_2.0/train_script_stock_t/*/*": ["test_2_0_train_py_stock_draws_are_2_0_rule_by_hand"],
}


def leaves(node, path=()):
    """Every number of the file as its path of keys (list entries as "*")."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, path + (key,))
    elif isinstance(node, list) and node and isinstance(node[0], (dict, list)):
        for value in node:
            yield from leaves(value, path + ("*",))
    else:
        yield path


def matches(pattern, path):
    parts = pattern.split("/")
    return len(parts) == len(path) and all(p == k or p == "*" or (p.endswith("*") and k.startswith(p[:-1]))
                                           for p, k in zip(parts, path))


def string_constants(test):
    """The strings a test's source holds (its decorators' too), and the module-level constants it reads."""
    module_name, _, name = test.rpartition(":")
    module = sys.modules[__name__] if not module_name else __import__(module_name)
    tree = ast.parse(textwrap.dedent(inspect.getsource(getattr(module, name))))
    return {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def test_every_golden_is_read_by_a_test():
    """A number no test reads would be a golden that checks nothing: each path of the file is matched by exactly
    one entry of READ_BY, whose tests exist and name the number's key; and every entry still matches a number."""
    paths = sorted(set(leaves(GOLDEN)))
    for path in paths:
        owners = [pattern for pattern in READ_BY if matches(pattern, path)]
        assert len(owners) == 1, ("/".join(path), owners)
        key = next(k for k in reversed(path) if k != "*")
        for test in READ_BY[owners[0]]:
            assert key in string_constants(test), (f"{test} does not read {key!r}", "/".join(path))
    for pattern in READ_BY:
        assert any(matches(pattern, path) for path in paths), f"READ_BY entry {pattern!r} matches no golden"
