"""``sift_ds.kernels``: the early-exit scorer as a functional API (``api.py``), its torch reference twin
(``reference.py``) and the Triton kernels (``triton_scorer.py``, ``triton_topk.py``).

setup.py installs this directory as the subpackage ``sift_ds.kernels``, never as a top-level
``kernels``: that name belongs to an unrelated package (Hugging Face ``kernels``), which transformers
probes at import time.
"""
if __name__ == "sift_ds.kernels":
    from .api import *  # noqa: F401,F403
    from .api import __all__  # noqa: F401
else:
    # A checkout root on sys.path (``python -c`` from the repository, PYTHONPATH=<checkout>) makes this
    # directory importable as a top-level ``kernels``. Be an inert module without ``__file__`` then, so
    # that transformers' probe for the unrelated package of that name sees none (instead of this code
    # under a second name, or an ImportError inside ``import transformers``).
    del __file__
    __all__ = []
