"""Benchmarks (not tests): each prints its figures and ratios against a baseline
measured in the same run. `make bench` runs them all."""
