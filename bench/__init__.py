"""Benchmarks run by ``make bench``: each module measures ours against a baseline in one run."""
