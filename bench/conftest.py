import os

os.environ.setdefault("CGANRAW_BACKEND", "numpy")
