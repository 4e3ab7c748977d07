"""Data prep: raw videos → shots → dynamic clips → latents and embeddings → curriculum Parquet.

Each stage is a plain function or class, testable without Ray; `pipeline.py` wires them as Ray
Data operators.
"""
