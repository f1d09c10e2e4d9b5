"""beeray: beeFormer training of sentence-Transformer text encoders on interaction data, on Ray."""

__version__ = "0.1.0"
