# An Open-Sora training config with its scheduler switched to rflow-timeshift, without editing the original.
#
#   OPENSORA_CONFIG=/path/to/Open-Sora/configs/opensora-v1-2/train/stage1.py \
#   torchrun --standalone --nproc_per_node 8 scripts/train.py path/to/derive_from_opensora.py --data-path data.csv
#
# OPENSORA_CONFIG is read by mmengine ({{$VAR:default}}), absolute or relative to this file. The default is a small
# stand-in shaped like Open-Sora 1.2's stage-1 config, so this file also loads from a checkout of this package.
_base_ = ["{{$OPENSORA_CONFIG:../../tests/fixtures/opensora_v1_2_stage1.py}}"]

custom_imports = dict(imports=["opensora_timeshift_patch"], allow_failed_imports=False)

# Merged key by key into the base's scheduler: its use_timestep_transform and sample_method stay.
scheduler = dict(type="rflow-timeshift", shift_mode="latent", on_degenerate="error")
