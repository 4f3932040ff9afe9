"""The benchmarks: ``bench_attention.py`` (attention backends), ``bench_mfalcon.py`` (M-FALCON candidate scoring,
its parts in ``mfalcon/``), ``gpu_check.sh`` with ``gpu_summary.py`` (every GPU check in one call), and
``common.py``, what they share. A package so that the scripts import ``bench.common`` and ``bench.mfalcon``."""
