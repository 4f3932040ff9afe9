"""The parts of ``bench/bench_mfalcon.py``: ``flops`` (the FLOP model and its bounds), ``methods`` (the model and
the naive / one-pass / M-FALCON scoring), ``sweep`` (their agreement check and timing), ``ranking`` (the
whole-catalogue ranking) and ``report`` (the printed table and the plot)."""
