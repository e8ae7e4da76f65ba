# shift_mode="continuous" for the stand-in run. Clips the rule sends to T_eff <= 0 (e.g. 8 frames under frames16) are shifted as T_eff = 1.
_base_ = ["base.py"]
scheduler = dict(shift_mode="continuous", on_degenerate="clamp")
