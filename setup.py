"""sift_ds: SIFT (sample sifting via early exiting) for DeepSpeed BERT-class pretraining."""
from setuptools import find_packages, setup

setup(
    name="sift_ds",
    version="0.1.0",
    description="SIFT sample sifting via early exiting, as a DeepSpeed engine extension",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",  # transformers' own floor since 5.x
    # The Triton kernels (the top-level kernels/ops) are installed as the subpackage sift_ds.kernels.ops.
    # kernels/ has no __init__.py: no checkout, editable install or wheel provides a top-level `kernels`
    # (Hugging Face's package of that name, which transformers imports).
    packages=find_packages(include=["sift_ds", "sift_ds.*"]) + ["sift_ds.kernels.ops"],
    package_dir={"sift_ds": "sift_ds", "sift_ds.kernels.ops": "kernels/ops"},
    # Ranges for library users, each capped below the next major release, which nothing here has been
    # tested with; requirements/lock.txt holds the one tested set (what `make setup` installs), and
    # `make test-latest` runs the smoke set with the newest releases these ranges allow. Each floor is the
    # release `make test-oldest` installs, every floor at once, and passes the smoke set with; the
    # front-ends refuse an older release at start-up (sift_ds/versions.py).
    install_requires=[
        # Each Linux x86_64 torch wheel pins its own triton (2.4 -> 3.0, 2.6 -> 3.2, 2.7 -> 3.3, 2.8 -> 3.4):
        # 2.8 is the oldest torch that installs with triton's floor below (megatron-core 0.16 needs 2.6,
        # transformers 5.13 disables a torch older than 2.4).
        "torch>=2.8,<3",
        "deepspeed>=0.16,<1",
        "transformers>=5.13,<6",
        "datasets>=2.21,<6",
        "tokenizers>=0.22,<1",
        "tqdm>=4.66.3,<5",  # datasets 2.21 (the floor above) needs it
        "numpy>=2.0,<3",
        "psutil>=5.9,<8",  # a rank watches its launchers (sift_ds/pretrain/stop_request.py)
    ],
    extras_require={
        # triton ships with CUDA torch wheels; on the CPU it runs under TRITON_INTERPRET=1. 3.3 is the first
        # whose compiler takes tl.range(..., flatten=) (the scorer; the interpreter ignores the keyword), 3.4
        # the first whose triton.autotune needs no GPU when it decorates: DeepSpeed imports its own Triton
        # kernels whenever triton imports, so with 3.3 `import deepspeed` fails on a machine without a GPU.
        "triton": ["triton>=3.4,<4"],
        "tensorboard": ["tensorboard>=2.14,<3"],
        "test": ["pytest>=7,<10", "pytest-benchmark>=4,<6", "pytest-timeout>=2,<3", "pytest-xdist>=3.5,<4", "psutil>=5.9,<8",
                 "triton>=3.4,<4", "tensorboard>=2.14,<3", "scipy>=1.13,<2", "matplotlib>=3.9,<4",
                 "megatron-core>=0.16,<0.20", "accelerate>=1.3,<2",  # scipy: 1.13 is the first for numpy 2
                 # the trackers' offline runs (tests/test_tracking.py)
                 "wandb>=0.31,<1", "comet-ml>=3.58,<4"],
        "study": ["matplotlib>=3.9,<4"],
        # sift_ds.hf.SiftTrainer: transformers' Trainer runs on accelerate.
        "hf": ["accelerate>=1.3,<2"],
        "megatron": ["megatron-core>=0.16,<0.20"],
    },
)
