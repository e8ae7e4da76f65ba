"""The shift itself: values from the formula, the guard, dtypes, batches and graph capture."""

import math
import warnings

import pytest
import torch

from conftest import meta
from opensora_timeshift_patch import SHIFT_MODES, TimestepShift, rational_shift, temporal_size, timestep_transform
from test_policies import reference

RESOLUTIONS = [(144, 256), (256, 256), (480, 854), (512, 512), (720, 1280), (1024, 1024)]


def formula(t, h, w, t_eff, scale=1.0):
    """Open-Sora's shift on t in [0, 1], in double precision."""
    a = math.sqrt(h * w / (512 * 512)) * math.sqrt(t_eff / 1) * scale
    den = 1 + (a - 1) * t
    return a * t / den if den else math.nan  # a = 0 at t = 1: the stock 0 / 0


@pytest.mark.parametrize("mode", SHIFT_MODES)
@pytest.mark.parametrize("h, w", RESOLUTIONS)
def test_every_mode_frame_count_and_resolution_against_the_formula(mode, h, w):
    frames = list(range(1, 205))
    steps = torch.linspace(0, 1000, 11, dtype=torch.float64).tolist()
    t = torch.tensor([s for _ in frames for s in steps], dtype=torch.float64)  # one sample per (frames, t)
    kw = meta(h, w, [n for n in frames for _ in steps], dtype=torch.float64)
    got = timestep_transform(t, kw, num_timesteps=1000, shift_mode=mode, on_degenerate="ignore")
    want = torch.tensor([1000 * formula(s / 1000, h, w, reference(mode, n)) for n in frames for s in steps],
                        dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-9, equal_nan=True)


@pytest.mark.parametrize(
    "h, w, n, t, want",
    [
        (256, 256, 16, 0.5, 0.5),  # latent T_eff 4: a = 0.5 * 2 = 1, the identity
        (1024, 1024, 1, 0.5, 2 / 3),  # image, a = 2: 1 / 1.5
        (512, 512, 16, 0.25, 0.4),  # a = 2: 0.5 / 1.25
        (512, 512, 51, 1.0, 1.0),  # pure noise stays pure noise
        (512, 512, 51, 0.0, 0.0),  # clean stays clean
    ],
)
def test_worked_examples(h, w, n, t, want):
    got = timestep_transform(torch.tensor([t]), meta(h, w, n))
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_rational_shift_fixes_the_ends_and_is_monotone():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    for a in (0.25, 1.0, 3.0, 12.0):
        s = rational_shift(t, torch.tensor(a, dtype=torch.float64))
        assert s[0] == 0 and s[-1] == 1 and bool((s.diff() > 0).all())


def test_stock_collapse_reproduced_with_legacy_and_ignore():
    """16 frames under Open-Sora 1.2's rule: ratio 0, so t' = 0 in training and 0/0 at t = N."""
    t = torch.rand(8) * 1000
    assert timestep_transform(t, meta(256, 256, 16), num_timesteps=1000, shift_mode="legacy",
                              on_degenerate="ignore").eq(0).all()
    first = timestep_transform(torch.tensor([1000.0]), meta(256, 256, 16), num_timesteps=1000, shift_mode="legacy",
                               on_degenerate="ignore")
    assert torch.isnan(first).all()


def test_error_names_frame_count_mode_and_fix():
    with pytest.raises(ValueError) as err:
        timestep_transform(torch.tensor([500.0, 500.0]), meta(256, 256, [17, 16]), num_timesteps=1000,
                           shift_mode="legacy")
    msg = str(err.value)
    assert "num_frames=16" in msg and "shift_mode='legacy'" in msg and "sample 1" in msg
    assert "shift_mode='latent'" in msg and "4 for 16 frames" in msg and "on_degenerate='clamp'" in msg


def test_v13_refuses_two_to_four_frames():
    with pytest.raises(ValueError, match="shift_mode='v13' gives T_eff = 0 for num_frames=3"):
        timestep_transform(torch.tensor([0.5]), meta(256, 256, 3), shift_mode="v13")


@pytest.mark.parametrize("n", [0, -4, float("nan")])
@pytest.mark.parametrize("mode", ["latent", "legacy", "continuous", "spatial"])
def test_invalid_frame_counts_are_errors(n, mode):
    with pytest.raises(ValueError, match=r"num_frames=(0|-4|nan) \(sample 0\) is not a valid frame count"):
        timestep_transform(torch.tensor([0.5]), meta(256, 256, n), shift_mode=mode)


@pytest.mark.parametrize("h, w", [(0, 256), (256, -1), (float("nan"), 256), (float("inf"), 256)])
def test_invalid_resolutions_are_errors(h, w):
    with pytest.raises(ValueError, match="is not a valid resolution"):
        timestep_transform(torch.tensor([0.5]), meta(h, w, 17))


def test_missing_meta_key_is_named():
    kw = meta(256, 256, 17)
    del kw["num_frames"]
    with pytest.raises(ValueError, match="model_kwargs is missing 'num_frames'"):
        timestep_transform(torch.tensor([0.5]), kw)
    with pytest.raises(ValueError, match=r"the batch meta \(model_kwargs / additional_args\) is None"):
        timestep_transform(torch.tensor([0.5]), None)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(shift_mode="frames17"), "shift_mode='frames17' is not allowed: use one of 'legacy', 'frames16'"),
        (dict(on_degenerate="warn"), "on_degenerate='warn' is not allowed: use one of 'error', 'clamp', 'ignore'"),
        (dict(scale=0), r"transform_scale=0 is not allowed: use a finite number in \[0.01, 100\]"),
        (dict(scale=-1.0), r"transform_scale=-1.0 is not allowed"),
        (dict(base_resolution=0), r"base_resolution=0 is not allowed: use a finite number in \[1, 1000000000\]"),
        (dict(base_num_frames=float("nan")), r"base_num_frames=nan is not allowed"),
        (dict(num_timesteps=0), r"num_timesteps=0 is not allowed: use a finite number in \(0, 1000000\]"),
        (dict(micro_frame_size=0), r"micro_frame_size=0 is not allowed: use None or an int in \[1, 100000\]"),
        (dict(temporal_compression=2.5), r"temporal_compression=2.5 is not allowed: use an int in \[1, 64\]"),
        (dict(uniform_over_threshold=1.5), r"uniform_over_threshold=1.5 is not allowed: use None or a finite number in \[0, 1\)"),
    ],
)
def test_bad_parameters_are_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timestep_transform(torch.tensor([0.5]), meta(256, 256, 17), **kwargs)


def test_parameter_of_another_policy_names_both():
    with pytest.raises(ValueError, match=r"micro_frame_size=16 is a parameter of shift_mode 'latent', not of "
                                         r"shift_mode='legacy': remove it or select shift_mode='latent'"):
        TimestepShift("legacy", micro_frame_size=16)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int32, torch.int64])
def test_low_precision_meta_gives_the_float32_answer(dtype):
    """720 x 1280 overflows float16 (max 65504); bf16 would round the ratio. Both meta are exact here."""
    assert torch.isinf(torch.tensor(720.0, dtype=torch.float16) * 1280)
    t = torch.rand(16) * 1000
    want = timestep_transform(t, meta(720, 1280, 51), num_timesteps=1000)
    got = timestep_transform(t, meta(720, 1280, 51, dtype=dtype), num_timesteps=1000)
    assert got.dtype == torch.float32 and torch.equal(got, want)


def test_output_dtype():
    kw = meta(256, 256, 17)
    assert timestep_transform(torch.tensor([500]), kw, num_timesteps=1000).dtype == torch.float32
    assert timestep_transform(torch.tensor([0.5], dtype=torch.float64), kw).dtype == torch.float64
    assert timestep_transform(torch.tensor([0.5], dtype=torch.bfloat16), kw).dtype == torch.float32


def test_mixed_frame_batch_is_per_sample():
    frames, t = [1, 16, 17, 51, 1, 33], torch.full((6,), 600.0)
    with pytest.warns(UserWarning, match="2-4"):
        batch = timestep_transform(t, meta(512, 512, frames), num_timesteps=1000, shift_mode="v13",
                                   on_degenerate="clamp")
    alone = [timestep_transform(t[:1], meta(512, 512, n), num_timesteps=1000, shift_mode="v13") for n in frames]
    assert torch.equal(batch, torch.cat(alone))
    assert batch[0] == 600 and batch[4] == 600  # images: T_eff = 1, a = 1 at 512 x 512


@pytest.mark.parametrize("mode, on_degenerate", [("latent", "clamp"), ("latent", "ignore"), ("legacy", "clamp"),
                                                 ("continuous", "ignore"), ("v13", "clamp")])
def test_fullgraph_capture(mode, on_degenerate):
    """No .item(), no branch on tensor values, no sync: the whole transform is one graph.

    Captured twice: a configured TimestepShift, and the drop-in function after an eager call has configured it
    (torch 2.2 cannot trace the configuration itself).
    """
    kw = meta(720, [1280, 1280, 1280, 1280], [1, 16, 17, 51])
    t = torch.rand(4) * 1000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shift = TimestepShift(mode, on_degenerate)

        def drop_in(t):
            return timestep_transform(t, kw, num_timesteps=1000, shift_mode=mode, on_degenerate=on_degenerate)

        want = drop_in(t)
        for fn in (lambda t: shift(t, kw, 1000), drop_in):
            torch._dynamo.reset()
            assert torch.equal(torch.compile(fn, fullgraph=True, backend="eager")(t), want)


def test_clamp_warns_once_at_set_up_and_shifts_as_one():
    from opensora_timeshift_patch import shift

    shift._CLAMP_WARNED.clear()
    with pytest.warns(UserWarning, match=r"shift_mode='frames16' gives T_eff <= 0 for num_frames in 2-15"):
        policy = TimestepShift("frames16", "clamp")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TimestepShift("frames16", "clamp")
        got = policy(torch.tensor([0.5]), meta(512, 512, 8))
    assert got.item() == 0.5  # T_eff 1 at 512 x 512: identity
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TimestepShift("latent", "clamp")  # latent has nothing to clamp, nothing to say


def test_1_3_keywords():
    kw, t = meta(512, 512, [1, 51]), torch.tensor([0.5, 0.5])
    shifted, ratio = timestep_transform(t, kw, ret_ratio=True)
    torch.testing.assert_close(ratio, torch.tensor([1.0, math.sqrt(15)]))
    assert torch.equal(timestep_transform(t, kw, scale_temporal=False), timestep_transform(t, kw, shift_mode="spatial"))
    # scale: 1.2 scales images too, 1.3 videos only
    assert timestep_transform(t, kw, scale=4.0)[0].item() == pytest.approx(0.8)
    assert timestep_transform(t, kw, scale=4.0, scale_images=False)[0].item() == 0.5


def test_uniform_over_threshold_redraws_only_videos_above_it():
    t = torch.tensor([0.99, 0.99, 0.2, 0.99] * 256, dtype=torch.float64)
    kw = meta(256, 256, [1, 17, 17, 17] * 256, dtype=torch.float64)  # a = 0.5 sqrt(5) ~ 1.118
    plain = timestep_transform(t, kw)
    got = timestep_transform(t, kw, uniform_over_threshold=0.9)
    assert torch.equal(got[0::4], plain[0::4]) and torch.equal(got[2::4], plain[2::4])
    redrawn = got[1::4]
    assert bool((redrawn >= 0.9).all()) and bool((redrawn <= 1).all()) and redrawn.std() > 0.02


def test_latent_frames_of_the_tensor_win_in_latent_mode():
    kw = meta(512, 512, 16)
    assert timestep_transform(torch.tensor([0.5]), kw, latent_frames=9).item() == pytest.approx(0.75)  # a = 3
    assert timestep_transform(torch.tensor([0.5]), kw, latent_frames=9, shift_mode="frames16").item() == \
        pytest.approx(2 / 3)  # a = 2 from n // 16 * 4


# --- meta validated on every path ------------------------------------------------------------------------------

INVALID_META = [
    (dict(num_frames=0), "num_frames=0 .* not a valid frame count"),
    (dict(num_frames=-1), "num_frames=-1 .* not a valid frame count"),
    (dict(num_frames=16.5), "num_frames=16.5 .* must be a whole number >= 1"),
    (dict(num_frames=math.nan), "num_frames=nan"),
    (dict(num_frames=math.inf), "num_frames=inf"),
    (dict(height=0), "height x width = 0 x 256"),
    (dict(height=math.nan), "height x width = nan x 256"),
    (dict(width=-256), "height x width = 256 x -256"),
    (dict(height=-256, width=-256), "height x width = -256 x -256"),  # a positive product is still no resolution
    (dict(height=1e30, width=1e30), "height x width = 1e\\+30 x 1e\\+30"),  # overflows float32
]


@pytest.mark.parametrize("mode", ["latent", "spatial", "frames16"])
@pytest.mark.parametrize("bad, match", INVALID_META)
def test_invalid_meta_is_named_under_error(bad, match, mode):
    kw = {**meta(256, 256, 17), **{k: torch.tensor([float(v)]) for k, v in bad.items()}}
    with pytest.raises(ValueError, match=match):
        TimestepShift(mode)(torch.tensor([0.5]), kw)


@pytest.mark.parametrize("on_degenerate", ["clamp", "ignore"])
@pytest.mark.parametrize("bad, match", INVALID_META)
def test_invalid_meta_stops_the_sync_free_paths_with_a_device_assert(bad, match, on_degenerate):
    """No host sync on these paths: torch._assert_async, which on the CPU raises at once (on a GPU it stops the run
    with a device-side assert). Never a silent t = 0 or NaN."""
    kw = {**meta(256, 256, 17), **{k: torch.tensor([float(v)]) for k, v in bad.items()}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shift = TimestepShift("latent", on_degenerate)
    what = "num_frames" if "num_frames" in bad else "height or width"
    with pytest.raises(RuntimeError, match=f"timestep shift: a {what} in the batch meta is not"):
        shift(torch.tensor([0.5]), kw)


def test_clamp_still_clamps_valid_degenerate_frames_without_a_sync():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = TimestepShift("legacy", "clamp")(torch.tensor([0.5]), meta(512, 512, 16))
    assert got.item() == 0.5  # T_eff clamped to 1 at 512 x 512: the identity


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(height=torch.full((2, 1), 256.0)), r"meta height has shape \(2, 1\): it must be \(2,\)"),
        (dict(num_frames=torch.full((3,), 17.0)), r"meta num_frames has shape \(3,\): it must be \(2,\)"),
        (dict(height="720"), "meta height='720' is not allowed: it must be a real number or a tensor"),
        (dict(height=None), "meta height=None is not allowed"),
        (dict(num_frames=torch.tensor([True, True])), "meta num_frames=<Tensor of shape"),
        (dict(width=[256, 256]), r"meta width=\[256, 256\] is not allowed"),
    ],
)
def test_meta_of_the_wrong_type_or_shape_is_named(kw, match):
    with pytest.raises(ValueError, match=match):
        timestep_transform(torch.tensor([0.5, 0.5]), {**meta(256, 256, [17, 17]), **kw})


def test_meta_may_be_a_single_number_for_the_whole_batch():
    got = timestep_transform(torch.tensor([0.25, 0.5]), dict(height=512, width=512, num_frames=torch.tensor(16.0)),
                             shift_mode="frames16")
    torch.testing.assert_close(got, torch.tensor([0.4, 2 / 3]))  # a = 2


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16, torch.int64,
                                   torch.int32])
@pytest.mark.parametrize("h, w, n", [(720, 1280, 51), (512, 512, 16), (240, 424, 17), (1080, 1920, 102)])
def test_result_does_not_depend_on_the_meta_dtype(dtype, h, w, n):
    """Open-Sora casts the meta to bf16 (dtype="bf16") or fp16 before the scheduler sees them. For values that
    dtype holds exactly, the shift is computed in float32 whatever the meta's dtype; stock computes the ratio in
    the meta's dtype, so bit parity with stock holds for fp32 meta only."""
    t = torch.linspace(0, 1000, 33)
    want = timestep_transform(t, meta(h, w, [n] * 33), num_timesteps=1000, shift_mode="v13")
    got = timestep_transform(t, meta(h, w, [n] * 33, dtype=dtype), num_timesteps=1000, shift_mode="v13")
    assert got.dtype == torch.float32 and torch.equal(got, want)


def test_temporal_size_takes_integer_frame_counts():
    n = torch.tensor([1, 16, 17, 51], dtype=torch.int64)
    assert temporal_size(n, "latent").tolist() == [1.0, 4.0, 5.0, 15.0]  # 1.2's VAE: (n // 17) 5 + ceil(n % 17 / 4)
    assert temporal_size(n.int(), "v13").tolist() == [1.0, 3.0, 4.0, 12.0]  # (n - 1) // 4


@pytest.mark.parametrize("settings", [
    {}, dict(shift_mode="v13"), dict(transform_scale=1.7, scale_images=False), dict(base_num_frames=5),
    dict(temporal_exponent=0.4), dict(spatial_exponent=0.6), dict(resolution_shift="linear"),
    dict(resolution_shift="linear", token_count="video"), dict(shift_family="exponential", resolution_shift="linear"),
])
@pytest.mark.parametrize("t_dtype", [torch.float32, torch.float64])
def test_the_host_path_gives_the_device_paths_bits(settings, t_dtype):
    """The default path computes on its host copy in numpy; "clamp" computes with torch ops. For valid meta whose
    factors need no clamping the two are the same operations in the same order, so the same bits."""
    t = torch.linspace(0, 1000, 7, dtype=t_dtype)
    kw = meta(720, 1280, [1, 17, 34, 51, 68, 85, 102])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        host = TimestepShift(on_degenerate="error", **settings)
        device = TimestepShift(on_degenerate="clamp", **settings)
    for call in range(2):  # the second call takes the judged factor that the first one kept
        got, ratio = host(t, kw, 1000, ret_ratio=True)
        want, want_ratio = device(t, kw, 1000, ret_ratio=True)
        assert got.dtype == want.dtype and torch.equal(got, want) and torch.equal(ratio, want_ratio), call
    scalar = dict(height=720, width=1280, num_frames=51)  # numbers for the batch, and a single t
    for t_in in (t, torch.tensor(500.0, dtype=t_dtype)):
        got, ratio = host(t_in, scalar, 1000, ret_ratio=True)
        want, want_ratio = device(t_in, scalar, 1000, ret_ratio=True)
        assert got.shape == want.shape and ratio.shape == want_ratio.shape
        assert torch.equal(got, want) and torch.equal(ratio, want_ratio)
