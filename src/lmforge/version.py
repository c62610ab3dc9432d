"""The version of lmforge, written into every checkpoint and data manifest."""

__version__ = "0.2.0"
