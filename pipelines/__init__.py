"""The command-line entry points (thin: the logic lives in mempack/ and data_prep/).

pyproject's console scripts call their `main`.
"""
