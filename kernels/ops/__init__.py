"""``sift_ds.kernels.ops``: the Triton kernels, one module per op.

* ``triton_scorer``: the fused early-exit scorer's functional API, over ``scorer_kernels`` (the
  kernels: vocab statistics, split merge, segment mean) and ``scorer_launch`` (their construction,
  autotune space, split plan and launch);
* ``triton_topk``: top-k of the per-sequence scores;
* ``aot``: ahead-of-time compiles of both for sm_80 / sm_90, and their register / spill / MMA report.

This directory is the repository's top-level ``kernels/ops``; setup.py installs it as the subpackage
``sift_ds.kernels.ops`` (``kernels/`` itself has no ``__init__.py``, so a checkout root on ``sys.path``
never provides a package named ``kernels``: that name belongs to Hugging Face's ``kernels``, which
transformers imports). Importing this package imports no Triton; each module does, when the
functional API (``sift_ds.kernels``) dispatches to it.
"""
