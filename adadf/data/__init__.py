"""Datasets, transforms and loaders; every builder returns a ``DataBundle``."""
from adadf.data.bundle import DataBundle, make_loader

__all__ = ["DataBundle", "make_loader"]
