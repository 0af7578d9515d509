"""cganraw: conditional GANs for handwritten characters, every layer written by hand.

Layering (each uses only the one below):
    kernels/*.cu -> cganraw.ops -> cganraw.nn -> cganraw.models -> train / sample / evaluate
"""
import os as _os
import sys as _sys

__version__ = "0.1.0"

# OpenBLAS's worker threads spin for 2^28 cycles (about 0.1 s) after every GEMM unless
# $OPENBLAS_THREAD_TIMEOUT, read once as NumPy loads OpenBLAS, says otherwise; spinning, they
# hold the cores that the Numba kernels between the GEMMs need. 4 (2^4 cycles: they go to
# sleep at once) where the user set nothing and NumPy is not loaded yet (after that it is too
# late); the training step ran 12-15% faster with Numba on both cores beside BLAS (README:
# the two thread pools). cganraw.threads.blas_workers_sleep() says whether it is in force.
if "numpy" not in _sys.modules:
    _os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
