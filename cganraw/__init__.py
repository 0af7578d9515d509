"""cganraw: conditional GANs for handwritten characters, every layer written by hand.

Layering (each uses only the one below):
    kernels/*.cu -> cganraw.ops -> cganraw.nn -> cganraw.models -> train / sample / evaluate
"""
__version__ = "0.1.0"
