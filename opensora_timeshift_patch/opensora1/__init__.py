"""The Open-Sora 1.2 / 1.3 integration: the ``rflow-timeshift`` scheduler (:mod:`.scheduler`) built on the core
:class:`~opensora_timeshift_patch.core.Recipe`, its standalone rectified flow (:mod:`.rflow`), where it registers
(:mod:`.registry`), and ``patch`` for stock ``rflow`` (:mod:`.patch`)."""
