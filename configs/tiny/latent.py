# shift_mode="latent" for the stand-in run. The VAE's own latent length (recommended).
_base_ = ["base.py"]
scheduler = dict(shift_mode="latent", on_degenerate="error")
