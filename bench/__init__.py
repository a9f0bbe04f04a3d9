"""Benchmarks: each module measures one thing and writes its results under ``bench/results/``."""
