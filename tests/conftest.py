import sys

import pytest
import torch


def meta(height, width, num_frames, dtype=torch.float32):
    """Open-Sora batch meta: one tensor per key, batch-length, broadcast from scalars or lists."""
    h, w, n = torch.broadcast_tensors(*(torch.as_tensor(v, dtype=torch.float64) for v in (height, width, num_frames)))
    return {"height": h.to(dtype), "width": w.to(dtype), "num_frames": n.to(dtype)}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fresh_warnings():
    """The clamp warning is said once per process; each test starts as a fresh process would."""
    from opensora_timeshift_patch import shift

    shift._CLAMP_WARNED.clear()
    shift._SHIFTS.clear()


def forget_opensora():
    """Drop every imported opensora module, so the next test imports its own (fake) Open-Sora afresh."""
    for name in [m for m in sys.modules if m == "opensora" or m.startswith("opensora.")]:
        del sys.modules[name]


@pytest.fixture
def fake2(tmp_path, monkeypatch):
    """A miniature Open-Sora 2.0 importable in this process: its config and sampling modules."""
    import opensora_timeshift_patch as ots
    from fake_opensora import write_fake_opensora2

    write_fake_opensora2(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    from opensora.utils import config, sampling

    yield config, sampling
    ots.unpatch()
    forget_opensora()
