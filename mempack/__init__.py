"""mempack: long-form image-to-video diffusion with MemoryPack and Direct Forcing.

The model library: pure PyTorch + diffusers/transformers, usable without Ray or MLflow.
"""

__version__ = "0.1.0"
