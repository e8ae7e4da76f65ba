# Pick the timestep-shift policy at launch time, with no file edit:
#
#   TIMESHIFT_MODE=frames16 OPENSORA_CONFIG=/path/to/Open-Sora/configs/opensora-v1-2/train/stage1.py \
#   torchrun --standalone --nproc_per_node 8 scripts/train.py path/to/select_by_env.py
#
# Unset variables fall back to the defaults after the colon.
_base_ = ["{{$OPENSORA_CONFIG:../../tests/fixtures/opensora_v1_2_stage1.py}}"]

custom_imports = dict(imports=["opensora_timeshift_patch"], allow_failed_imports=False)

scheduler = dict(
    type="rflow-timeshift",
    shift_mode="{{$TIMESHIFT_MODE:latent}}",
    on_degenerate="{{$TIMESHIFT_ON_DEGENERATE:error}}",
)
