"""Benchmarks: each module prints a table and writes bench/results/*.json; none is part of the tests.

Run one from the repository root as a module, `python -m bench.memory_scaling` (so one benchmark can import
another as `bench.method_fidelity`); mempack and data_prep come from the installed package.
"""
