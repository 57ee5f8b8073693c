"""simd, the similar-image daemon: keeps an image folder indexed by what its pictures look like."""

__version__ = "0.1.0"
