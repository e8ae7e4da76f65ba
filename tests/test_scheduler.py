"""rflow-timeshift without Open-Sora: registry, configs, training and sampling."""

import math
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

import opensora_timeshift_patch as ots
from opensora_timeshift_patch import build_module
from standin.stubs import StubModel, StubTextEncoder, batch_meta, latent_shape, run_sampling

ROOT = Path(__file__).resolve().parents[1]


class TinyModel(torch.nn.Module):
    """A learnable velocity field with a timestep input, returning twice the channels like STDiT."""

    def __init__(self, channels=4):
        super().__init__()
        self.conv = torch.nn.Conv3d(channels + 1, 2 * channels, 3, padding=1)

    def forward(self, x, t, **kwargs):
        tt = (t.float() / 1000).view(-1, 1, 1, 1, 1).expand(-1, 1, *x.shape[2:])
        return self.conv(torch.cat([x, tt], dim=1))


def build(**cfg):
    return build_module(dict(type="rflow-timeshift", **cfg), ots.SCHEDULERS)


def test_registered_and_standalone_without_opensora():
    assert ots.SCHEDULERS.get("rflow-timeshift") is ots.RFlowTimeShift
    assert build().backend == "standalone"
    with pytest.raises(ImportError, match="backend='opensora' needs Open-Sora 1.2 or 1.3"):
        build(backend="opensora")


@pytest.mark.parametrize("mode", ots.SHIFT_MODES)
def test_policy_fragments_load_and_build(mode):
    cfg = Config.fromfile(str(ROOT / "configs" / "policies" / f"{mode}.py"))
    assert cfg.custom_imports["imports"] == ["opensora_timeshift_patch"]
    scheduler = build_module(cfg.scheduler, ots.SCHEDULERS)
    assert scheduler.shift.shift_mode == mode


def test_derived_config_keeps_the_base_scheduler_keys():
    cfg = Config.fromfile(str(ROOT / "configs" / "examples" / "derive_from_opensora.py"))
    assert cfg.scheduler == dict(type="rflow-timeshift", use_timestep_transform=True, sample_method="logit-normal",
                                 shift_mode="latent", on_degenerate="error")
    assert cfg.bucket_config["144p"][16] == (1.0, 24)  # the rest of the base survives
    scheduler = build_module(cfg.scheduler, ots.SCHEDULERS)
    assert scheduler.sample_method == "logit-normal"


def test_environment_selects_the_policy(monkeypatch, tmp_path):
    base = tmp_path / "my_stage1.py"
    base.write_text('scheduler = dict(type="rflow", use_timestep_transform=True, sample_method="uniform")\nlr = 3e-5\n')
    monkeypatch.setenv("TIMESHIFT_MODE", "frames16")
    monkeypatch.setenv("TIMESHIFT_ON_DEGENERATE", "clamp")
    monkeypatch.setenv("OPENSORA_CONFIG", str(base))
    cfg = Config.fromfile(str(ROOT / "configs" / "examples" / "select_by_env.py"))
    assert cfg.lr == 3e-5
    with pytest.warns(UserWarning, match="2-15"):
        scheduler = build_module(cfg.scheduler, ots.SCHEDULERS)
    assert (scheduler.shift.shift_mode, scheduler.shift.on_degenerate) == ("frames16", "clamp")


def test_config_trains_a_tiny_model_and_samples():
    """custom_imports -> registry -> training_losses with Open-Sora's call -> backward -> sample."""
    cfg = Config.fromfile(str(ROOT / "configs" / "policies" / "frames16.py"))
    scheduler = build_module(cfg.scheduler, ots.SCHEDULERS, num_sampling_steps=6)
    model = TinyModel()
    x = torch.randn(*latent_shape(3, 16, size=6))
    model_args = batch_meta(3, 512, 512, 16)
    model_args = {k: v.to(torch.bfloat16) for k, v in model_args.items()}  # as train.py casts them with dtype=bf16
    loss = scheduler.training_losses(model, x, model_args, mask=None)["loss"]
    assert loss.shape == (3,) and bool(loss.isfinite().all())
    loss.mean().backward()
    assert model.conv.weight.grad.abs().sum() > 0

    z = torch.randn(2, 4, 4, 6, 6)
    out = scheduler.sample(model, StubTextEncoder(), z=z, prompts=["a", "b"], device="cpu",
                           additional_args=batch_meta(2, 512, 512, 16), progress=False)
    assert out.shape == z.shape and bool(out.isfinite().all())


def test_sixteen_frames_train_at_real_noise_levels_and_sample_a_decreasing_grid():
    scheduler = build(shift_mode="frames16")
    model = StubModel()
    x = torch.randn(*latent_shape(64, 16))
    scheduler.training_losses(model, x, batch_meta(64, 512, 512, 16))
    t = model.seen[0] / 1000
    assert t.min() > 0 and t.max() < 1 and t.mean() > 0.5  # a = 2 pushes mass towards noise: E[t'] = 2 - 2 ln 2
    assert t.mean().item() == pytest.approx(2 - 2 * math.log(2), abs=0.06)

    steps, z = run_sampling(scheduler, x[:2], batch_meta(2, 512, 512, 16))
    grid = torch.stack([s[0] for s in steps])
    assert bool(grid.isfinite().all()) and bool((grid.diff() < 0).all()) and grid[0] == 1000
    assert bool(z.isfinite().all())
    shifted = scheduler.sampling_timesteps(x[:2], batch_meta(2, 512, 512, 16))
    assert torch.equal(torch.stack([s[0] for s in shifted]), grid)


def test_legacy_refuses_sixteen_frames_with_the_fix_in_the_message():
    scheduler = build(shift_mode="legacy")
    with pytest.raises(ValueError, match=r"num_frames=16.*shift_mode='latent'"):
        scheduler.training_losses(StubModel(), torch.randn(*latent_shape(2, 16)), batch_meta(2, 256, 256, 16))
    with pytest.raises(ValueError, match=r"num_frames=16"):
        run_sampling(scheduler, torch.randn(*latent_shape(2, 16)), batch_meta(2, 256, 256, 16))


def test_latent_mode_uses_the_tensor_length():
    """Meta says 16 frames, the latent has 9 (e.g. another VAE): the latent tensor is the truth."""
    model, x = StubModel(), torch.randn(2, 4, 9, 2, 2)
    torch.manual_seed(0)
    build().training_losses(model, x, batch_meta(2, 512, 512, 16))
    torch.manual_seed(0)
    u = torch.rand(2)
    torch.testing.assert_close(model.seen[0] / 1000, 3 * u / (1 + 2 * u))  # a = sqrt(1) * sqrt(9)


def test_explicit_t_is_used_as_given():
    model, t = StubModel(), torch.tensor([10.0, 990.0])
    build(shift_mode="legacy").training_losses(model, torch.randn(2, 4, 4, 2, 2), batch_meta(2, 256, 256, 16), t=t)
    assert torch.equal(model.seen[0], t)


def test_model_args_keyword_of_1_3():
    model = StubModel()
    build().training_losses(model, torch.randn(2, 4, 5, 2, 2), model_args=batch_meta(2, 256, 256, 17),
                            mask_index=[], x_gt=None, text_uncond_prob=None)
    assert len(model.seen) == 1
    with pytest.raises(TypeError, match="once"):
        build().training_losses(model, torch.randn(2, 4, 5, 2, 2), {}, model_args={})


def test_discrete_and_logit_normal_draws():
    model = StubModel()
    build(use_discrete_timesteps=True, use_timestep_transform=False).training_losses(
        model, torch.randn(8, 4, 5, 2, 2), batch_meta(8, 256, 256, 17))
    assert model.seen[0].dtype == torch.int64
    x = torch.randn(8, 4, 5, 2, 2)
    torch.manual_seed(0)
    build(sample_method="logit-normal", loc=0.0, scale=1.0, use_timestep_transform=False).training_losses(
        model, x, batch_meta(8, 256, 256, 17))
    torch.manual_seed(0)
    want = torch.sigmoid(torch.randn(8))  # LogisticNormal with one component: sigmoid of a normal
    torch.testing.assert_close(model.seen[1] / 1000, want)


def test_frame_mask_keeps_conditioning_frames_clean():
    captured = {}

    def model(x, t, **kw):
        captured["x"] = x
        return torch.cat([x, x], dim=1)

    x0, noise = torch.randn(2, 4, 5, 2, 2), torch.randn(2, 4, 5, 2, 2)
    mask = torch.tensor([[False, True, True, True, True]] * 2)
    build().training_losses(model, x0, batch_meta(2, 256, 256, 17), noise=noise, mask=mask)
    assert torch.equal(captured["x"][:, :, 0], x0[:, :, 0])
    assert not torch.equal(captured["x"][:, :, 1], x0[:, :, 1])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(num_timesteps=0), ValueError, r"num_timesteps=0 is not allowed: use an int in \[1, 1000000\]"),
        (dict(num_sampling_steps=2.5), ValueError, "num_sampling_steps=2.5 is not allowed: use an int"),
        (dict(sample_method="gamma"), ValueError, "sample_method='gamma' is not allowed: use one of 'uniform'"),
        (dict(sample_method="logit-normal", use_discrete_timesteps=True), ValueError, "needs sample_method='uniform'"),
        (dict(sample_method="logit-normal", scale=0.0), ValueError, r"scale=0.0 is not allowed: use a finite number in"),
        (dict(transform_scale=-2), ValueError, r"transform_scale=-2 is not allowed: use a finite number in \[0.01, 100\]"),
        (dict(uniform_over_threshold=1.0), ValueError, "uniform_over_threshold=1.0"),
        (dict(backend="cuda"), ValueError, "backend='cuda' is not allowed: use one of 'auto', 'opensora'"),
        (dict(shift_mode="legacy", micro_frame_size=16), ValueError,
         "micro_frame_size=16 is a parameter of shift_mode 'latent', not of shift_mode='legacy'"),
        (dict(use_flaw_fix=True), ValueError, "use_flaw_fix=True needs Open-Sora 1.3's RFLOW"),
    ],
)
def test_bad_scheduler_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        build(**kwargs)


def test_standalone_refuses_conditioning_it_does_not_implement():
    with pytest.raises(ValueError, match="mask_index=\\[0\\] .* needs Open-Sora 1.3's RFLOW"):
        build().training_losses(StubModel(), torch.randn(2, 4, 5, 2, 2), batch_meta(2, 256, 256, 17), mask_index=[0])


def test_policy_parameters_reach_the_policy():
    scheduler = build(shift_mode="latent", causal=True, temporal_compression=4)
    assert scheduler.shift.policy_params == dict(causal=True, temporal_compression=4)
    assert "causal=True" in repr(scheduler)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda s: s.training_losses(StubModel(), torch.randn(3, 4, 5, 2, 2), batch_meta(2, 256, 256, 17)),
         r"meta height has shape \(2,\): it must be \(3,\)"),
        (lambda s: s.training_losses(StubModel(), torch.randn(2, 4, 0, 2, 2), batch_meta(2, 256, 256, 17)),
         r"x_start of shape \(2, 4, 0, 2, 2\) is empty along T: the latent tensor has no samples, frames or pixels"),
        (lambda s: s.training_losses(StubModel(), torch.randn(0, 4, 5, 2, 2), batch_meta(0, 256, 256, 17)),
         "is empty along B"),
        (lambda s: s.training_losses(StubModel(), torch.ones(2, 4, 5, 2, 2, dtype=torch.int64),
                                     batch_meta(2, 256, 256, 17)), "latents must be a floating tensor"),
        (lambda s: s.training_losses(StubModel(), torch.randn(2, 4, 5, 2, 2), batch_meta(2, 256, 256, 17),
                                     mask=torch.ones(2, 4, dtype=torch.bool)), r"a frame mask is a bool tensor of shape"),
        (lambda s: s.training_losses(StubModel(), torch.randn(2, 4, 5, 2, 2), batch_meta(2, 256, 256, 17),
                                     t=torch.tensor([1.0])), r"pass one real timestep per sample, shape \(2,\)"),
        (lambda s: run_sampling_with(s, prompts=["only one"]), "give a list of 2 prompts, one per latent"),
        (lambda s: run_sampling_with(s, prompts="ab"), "give a list of 2 prompts"),
        (lambda s: run_sampling_with(s, mask=torch.ones(2, 9)), "a frame mask is a floating tensor of shape"),
        (lambda s: run_sampling_with(s, guidance_scale=math.nan), "cfg_scale=nan is not allowed"),
        (lambda s: run_sampling_with(s, additional_args=batch_meta(3, 256, 256, 17)),
         r"meta height has shape \(3,\): it must be \(2,\)"),
    ],
)
def test_wrong_shapes_and_counts_are_named_not_raw_torch_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(build())


def run_sampling_with(scheduler, prompts=("a", "b"), **kwargs):
    z = torch.randn(2, 4, 5, 2, 2)
    call = dict(additional_args=batch_meta(2, 256, 256, 17), progress=False)
    call.update(kwargs)
    return scheduler.sample(StubModel(), StubTextEncoder(), z=z, prompts=prompts, device="cpu", **call)


def test_bf16_meta_trains_exactly_as_float32_meta():
    """Open-Sora's train.py casts the meta to bf16; the shift is computed in float32 whatever the meta's dtype."""
    x = torch.randn(4, 4, 15, 2, 2)
    kw = batch_meta(4, 720, 1280, 51)
    ts = []
    for dtype in (torch.float32, torch.bfloat16):
        model = StubModel()
        torch.manual_seed(3)
        build(sample_method="logit-normal").training_losses(model, x, {k: v.to(dtype) for k, v in kw.items()})
        ts.append(model.seen[0])
    assert torch.equal(ts[0], ts[1])
