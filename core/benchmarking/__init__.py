"""Measuring speed and memory: the machinery behind ``ipt bench`` and ``benchmarks/`` (no flags, no printing).

* :mod:`.timing`: interleaved timing of several variants, wall and process CPU time, medians of ratios;
* :mod:`.flops`: FLOPs of one patch, counted analytically and checked against torch's ``FlopCounterMode``;
* :mod:`.ceiling`: this machine's best matmul rate per precision (fp32, bf16, fp16, int8) and what it is;
* :mod:`.sections`: the measured sections (forward, train, restore) of a :class:`~.sections.BenchSetup`;
* :mod:`.memory`: peak memory and time of whole-image restores, each in a fresh process.

Method and figures: ``benchmarks/README.md`` and ``benchmarks/RESULTS.md``.
"""
