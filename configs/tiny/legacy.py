# shift_mode="legacy" for the stand-in run. Open-Sora 1.2's stock rule with no guard: the collapse, reproduced.
_base_ = ["base.py"]
scheduler = dict(shift_mode="legacy", on_degenerate="ignore")
