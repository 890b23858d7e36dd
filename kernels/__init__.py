"""Fused Triton kernels for TinyStories-sized GPT-Neo models, importable as ``tinystories.kernels``."""
