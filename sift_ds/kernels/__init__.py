"""``sift_ds.kernels``: the early-exit scorer as a functional API.

Three layers, as in Liger-Kernel:

* ``functional``: the API re-exported here (``sequence_scores``, ``packed_sequence_scores``,
  ``select_topk``, ``token_scores``, ``vocab_shard_stats``, ...), dispatching on ``backend``;
* ``reference``: the torch twin, which defines the math;
* ``ops``: the Triton kernels (the repository's top-level ``kernels/ops``, installed as
  ``sift_ds.kernels.ops``).
"""
try:
    from . import ops  # noqa: F401  (imports no Triton: it only checks that the kernels are installed)
except ImportError as missing:
    raise ImportError(
        "sift_ds.kernels.ops (the Triton kernels, kernels/ops in the repository) is not installed: install "
        "sift_ds (`pip install -e <checkout>` or a wheel) instead of putting a checkout on PYTHONPATH") from missing

from .functional import *  # noqa: F401,F403,E402
from .functional import __all__  # noqa: F401,E402
