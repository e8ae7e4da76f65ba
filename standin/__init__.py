"""Stand-ins for Open-Sora's parts, for this repository's scripts and tests; not installed with the plugin.

* :mod:`standin.tiny`: a laptop-sized video stack (bouncing-blob clips, a latent map with Open-Sora 1.2's VAE
  geometry, ``TinySTDiT``, a Fréchet distance), trained by ``scripts/train_tiny.py`` and
  ``scripts/compare_policies.py``.
* :mod:`standin.stubs`: a fixed stub model and text encoder and Open-Sora's batch meta, for checking schedulers
  (the test-suite, ``scripts/check_against_opensora.py``, ``scripts/demo_policies.py``).

Scripts put the repository root on ``sys.path`` to import it; pytest does so through ``pythonpath`` in pytest.ini.
"""
