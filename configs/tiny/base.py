# The stand-in training run (scripts/train_tiny.py): bouncing-blob clips through a latent map with Open-Sora 1.2's
# VAE geometry, a ~240k-parameter TinySTDiT, and rflow-timeshift built from this config as Open-Sora builds it.
# The per-policy files beside this one set only the scheduler's shift_mode and guard.
custom_imports = dict(imports=["opensora_timeshift_patch"], allow_failed_imports=False)

seed = 0
dataset = dict(
    frames=[8, 16, 17, 32, 51],  # one frame count per batch, as Open-Sora's buckets
    nominal_resolution=(720, 1280),  # the meta height/width: a shift factor of 1.875 before the temporal part
    seed=0,
)
model = dict(width=64, depth=4)
scheduler = dict(
    type="rflow-timeshift",
    use_timestep_transform=True,
    sample_method="logit-normal",  # as Open-Sora 1.2's training configs
    num_sampling_steps=20,
)
train = dict(steps=600, batch_size=8, lr=2e-3, ckpt_every=200, log_every=10)
evaluation = dict(clips=160, loss_timesteps=10)  # clips split evenly over the frame counts
