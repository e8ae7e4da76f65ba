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
