"""`envforge smoke`: train a tiny model for real inside a target environment and report what works.

The framework scripts (torch_smoke.py, tf_smoke.py, jax_smoke.py, with _harness.py) run *inside*
the target and import nothing of envforge; run.py starts them (an interpreter or a container),
enforces the per-check timeouts and reads their JSON reports; judge.py compares what they saw
with the host probe, gpus.toml and the expected versions; render.py writes the human summary.
"""
