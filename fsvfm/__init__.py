"""FS-VFM: Face Security Vision Foundation Model (open reimplementation)."""

__version__ = "0.1.0"
