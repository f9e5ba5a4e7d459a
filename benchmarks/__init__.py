"""Throughput benchmarks for the dataset build, the shard reader and the synthetic faces.

Run with `make bench` (or `python -m benchmarks.run --help`). Every figure is a ratio against a
baseline measured in the same run, because the machines these run on are shared and noisy.
Modules here keep their top-level imports light: the build's spawn pool re-imports the main
module in every worker.
"""
