# rflow-timeshift with shift_mode="continuous": n * 5 / 17 without flooring.
# Copy the two lines below into an Open-Sora config in place of its `scheduler = dict(...)`, carrying over keys
# such as sample_method="logit-normal"; or derive from that config instead: ../examples/derive_from_opensora.py.
custom_imports = dict(imports=["opensora_timeshift_patch"], allow_failed_imports=False)
scheduler = dict(type="rflow-timeshift", shift_mode="continuous")
