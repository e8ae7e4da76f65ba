"""patch() / unpatch() / patched() on a miniature Open-Sora, and registration into Open-Sora's registry."""

import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import forget_opensora, meta
from fake_opensora import write_fake_opensora
import opensora_timeshift_patch as ots


@pytest.fixture(params=["1.2", "1.3"])
def fake_opensora(request, tmp_path, monkeypatch):
    write_fake_opensora(tmp_path, request.param)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield request.param
    ots.unpatch()
    forget_opensora()


def train_module(version):
    return sys.modules["opensora.schedulers.rf." + ("rectified_flow" if version == "1.2" else "time_sampler")]


def test_without_opensora_patch_explains_itself():
    with pytest.raises(ImportError, match="patching needs Open-Sora 1.2 or 1.3 importable.*rflow-timeshift"):
        ots.patch()


def test_patch_reaches_training_and_sampling_and_unpatch_restores(fake_opensora):
    from opensora.schedulers import rf

    originals = (rf.timestep_transform, train_module(fake_opensora).timestep_transform)
    stock = rf.RFLOW(use_timestep_transform=True, num_sampling_steps=4)
    model = lambda x, t, **kw: x  # noqa: E731
    x, kw = torch.zeros(2, 4, 4, 2, 2), meta(256, 256, [16, 16])
    if fake_opensora == "1.2":
        assert stock.training_losses(model, x, kw)["t"].eq(0).all()  # the stock collapse
        assert torch.isnan(stock.sample(None, None, x, ["a"] * 2, "cpu", kw)[0]).all()

    ots.patch(shift_mode="frames16")
    ots.patch(shift_mode="frames16")  # idempotent
    torch.manual_seed(0)
    t = stock.training_losses(model, x, kw)["t"]
    torch.manual_seed(0)
    u = torch.rand(2)  # a = 0.5 * sqrt(4) = 1 at 256 x 256: the identity
    torch.testing.assert_close(t, u * 1000)
    steps = stock.sample(None, None, x, ["a"] * 2, "cpu", kw)
    assert [s[0].item() for s in steps] == pytest.approx([1000, 750, 500, 250])
    assert ots.is_patched()

    ots.unpatch()
    assert (rf.timestep_transform, train_module(fake_opensora).timestep_transform) == originals
    assert not ots.is_patched()
    ots.unpatch()  # no-op


def test_patched_context_restores_the_previous_patch(fake_opensora):
    from opensora.schedulers import rf

    original = rf.timestep_transform
    ots.patch(shift_mode="latent")
    outer = rf.timestep_transform
    with ots.patched(shift_mode="spatial"):
        assert rf.timestep_transform is not outer
        out = rf.timestep_transform(torch.tensor([0.5]), meta(512, 512, 51))
        assert out.item() == 0.5  # spatial at 512 x 512: a = 1
    assert rf.timestep_transform is outer
    ots.unpatch()
    assert rf.timestep_transform is original


def test_patch_validates_at_once(fake_opensora):
    with pytest.raises(ValueError, match="shift_mode='frames15' is not allowed: use one of 'legacy'"):
        ots.patch(shift_mode="frames15")
    assert not ots.is_patched()


def test_patch_on_1_3_scales_videos_only(fake_opensora):
    from opensora.schedulers import rf

    ots.patch(shift_mode="v13")
    out = rf.timestep_transform(torch.tensor([0.5, 0.5]), meta(512, 512, [1, 1]), scale=3.0)
    assert out.tolist() == pytest.approx([0.5, 0.5] if fake_opensora == "1.3" else [0.75, 0.75])


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_registers_into_opensora_registry_and_builds_from_config(tmp_path, version):
    """A fresh interpreter, as torchrun gives: custom_imports registers us into Open-Sora's SCHEDULERS."""
    write_fake_opensora(tmp_path, version)
    cfg = tmp_path / "train.py"
    cfg.write_text(textwrap.dedent('''
        custom_imports = dict(imports=["opensora_timeshift_patch"], allow_failed_imports=False)
        scheduler = dict(type="rflow-timeshift", shift_mode="frames16", use_timestep_transform=True)
    '''))
    code = textwrap.dedent(f'''
        import torch
        from mmengine.config import Config
        cfg = Config.fromfile({str(cfg)!r})
        from opensora.registry import SCHEDULERS
        import opensora_timeshift_patch as ots
        assert ots.SCHEDULERS is SCHEDULERS
        s = SCHEDULERS.build(cfg.scheduler)
        assert s.backend == "opensora", s.backend
        kw = dict(height=torch.full((2,), 256.0), width=torch.full((2,), 256.0), num_frames=torch.full((2,), 16.0))
        out = s.training_losses(lambda x, t, **k: x, torch.zeros(2, 4, 4, 2, 2), model_args=kw, mask_index=[])
        assert out["kwargs"] == dict(mask_index=[]), out["kwargs"]
        assert bool((out["t"] > 0).all())
        steps = s.sample(None, None, torch.zeros(2, 4, 4, 2, 2), ["a", "b"], "cpu", additional_args=kw)
        print([round(x[0].item(), 3) for x in steps])
        from opensora.schedulers import rf
        assert rf.timestep_transform.__module__.startswith("opensora"), "sampling left the swap in place"
    ''')
    env = {"PYTHONPATH": str(tmp_path), "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    # frames16 at 256 x 256, 4 latent frames: a = 1, the unshifted grid
    assert out.stdout.strip().splitlines()[-1] == "[1000.0, 900.0, 800.0, 700.0, 600.0, 500.0, 400.0, 300.0, 200.0, 100.0]"


def test_partial_opensora_install_warns_once_and_falls_back(tmp_path):
    """opensora imports but opensora.schedulers does not (a dependency of Open-Sora's missing, e.g. colossalai):
    the package still imports, warns once naming the failing import, and builds on the standalone backend;
    backend='opensora' is a clear ImportError."""
    write_fake_opensora(tmp_path, "1.2")
    (tmp_path / "opensora" / "schedulers" / "__init__.py").write_text("import colossalai_is_missing_here\n")
    code = textwrap.dedent('''
        import warnings
        import torch
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import opensora_timeshift_patch as ots
            s = ots.build_module(dict(type="rflow-timeshift"), ots.SCHEDULERS)
            s2 = ots.build_module(dict(type="rflow-timeshift"), ots.SCHEDULERS)
        mine = [str(w.message) for w in caught if "opensora" in str(w.message)]
        assert len(mine) == 1, mine
        assert "colossalai_is_missing_here" in mine[0] and "standalone" in mine[0], mine[0]
        assert s.backend == s2.backend == "standalone"
        from opensora.registry import SCHEDULERS as theirs
        assert ots.SCHEDULERS is not theirs  # a registry that cannot import its schedulers is not used
        kw = dict(height=torch.full((2,), 256.0), width=torch.full((2,), 256.0), num_frames=torch.full((2,), 17.0))
        loss = s.training_losses(lambda x, t, **k: torch.cat([x, x], 1), torch.zeros(2, 4, 5, 2, 2), kw)["loss"]
        assert bool(loss.isfinite().all())
        try:
            ots.RFlowTimeShift(backend="opensora")
        except ImportError as err:
            assert "backend='opensora' needs Open-Sora" in str(err) and "colossalai_is_missing_here" in str(err)
        else:
            raise AssertionError("backend='opensora' built without Open-Sora's schedulers")
        print("ok")
    ''')
    env = {"PYTHONPATH": str(tmp_path), "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("kwargs, message", [
    (dict(shift_mode=None), "shift_mode=None is not allowed: use one of 'legacy'"),
    (dict(on_degenerate=None), "on_degenerate=None is not allowed: use one of 'error', 'clamp', 'ignore'"),
    (dict(shift_mode=True), "shift_mode=True is not allowed"),
])
def test_patch_refuses_what_the_scheduler_refuses(kwargs, message):
    with pytest.raises(ots.SettingError, match=message):
        ots.RFlowTimeShift(**kwargs)
    with pytest.raises(ots.SettingError, match=message):  # before it looks for Open-Sora: the settings are wrong
        ots.patch(**kwargs)


def test_telemetry_on_the_opensora_backend_counts_stock_rflow_s_per_sample_losses(fake_opensora, tmp_path):
    """Open-Sora's own RFLOW computes the loss (backend='opensora'); telemetry counts each sample's loss in its
    bucket: per bucket, the count is the samples seen and the sum the losses training_losses returned."""
    import json

    from opensora_timeshift_patch.telemetry import FILE_NAME
    from standin.stubs import StubModel, batch_meta

    run = tmp_path / "telemetry"
    s = ots.build_module(dict(type="rflow-timeshift", backend="opensora", shift_mode="latent",
                              telemetry=dict(dir=str(run), bins=10, every=4)), ots.SCHEDULERS)
    assert s.backend == "opensora"
    fed = {9: [0, 0.0], 17: [0, 0.0]}
    for step in range(4):
        frames, latent = (17, 5) if step % 2 else (9, 3)
        x = torch.randn(3, 4, latent, 4, 4)
        out = s.training_losses(StubModel(), x, model_args=batch_meta(3, 256, 256, frames), mask_index=[])
        fed[frames][0] += 3
        fed[frames][1] += float(out["loss"].double().sum())
    records = {r["num_frames"]: r for r in map(json.loads, (run / FILE_NAME).read_text().splitlines())}
    assert sorted(records) == [9, 17]
    for frames, (count, total) in fed.items():
        assert sum(records[frames]["count"]) == count == records[frames]["samples"]
        assert sum(records[frames]["sum"]) == pytest.approx(total, rel=1e-6)
        assert not records[frames]["check"]["alarm"]
