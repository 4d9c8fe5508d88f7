"""envforge: reproducible, provably working deep-learning environments."""

__version__ = "0.1.0"
