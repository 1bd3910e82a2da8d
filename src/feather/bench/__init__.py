"""feather.bench: ``feather-bench``, the benchmark of the pruned chain against the unpruned
chain, the PyTorch reference, transformers' eager ``generate`` and (optionally) OpenVINO.
See ``feather.bench.run.benchmark`` and docs/benchmarks.md."""
