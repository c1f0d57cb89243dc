"""The package layout: the public API, every documented way of importing sift_ds (editable install,
installed wheel, bare checkout on PYTHONPATH as on remote ranks), and the structural rules of the
code (module size, docstrings, no imports inside functions but for optional heavy dependencies)."""
import ast
import dataclasses
import glob
import inspect
import os
import shutil
import site
import subprocess
import sys

import pytest

import sift_ds
from launcher import REPO

# megatron: sift_ds.megatron imports megatron-core at module level, but Megatron-LM's training loop
# (``megatron.training``, or ``megatron`` in Megatron-DeepSpeed) is not part of megatron-core; the
# default iteration source imports it lazily, where it exists.
OPTIONAL_IMPORTS = ("triton", "apex", "torch.utils.tensorboard", "matplotlib", "importlib", "megatron")
LIBRARY_MAX_LINES = 250


def test_public_api():
    assert sorted(sift_ds.__all__) == sorted([
        "BertAdapter", "EarlyExitAdapter", "Selection", "SiftConfig", "SiftEngine", "detect_adapter",
        "early_exit_scores", "initialize", "kernels", "load_ds_config", "split_ds_config"])
    params = inspect.signature(sift_ds.initialize).parameters
    assert list(params)[:5] == ["args", "model", "model_parameters", "training_data", "config"]
    assert "sift_config" in params and "adapter" in params
    for name in ("select", "train_step", "stats", "probe", "sift_config", "selecting"):
        assert hasattr(sift_ds.SiftEngine, name) or name == "sift_config"
    assert "sift_config" in inspect.signature(sift_ds.SiftEngine.__init__).parameters
    for name in ("sequence_scores", "packed_sequence_scores", "select_topk", "token_scores", "vocab_shard_stats",
                 "BACKENDS", "CRITERIA", "IGNORE_INDEX"):
        assert hasattr(sift_ds.kernels, name), name
    assert sift_ds.kernels.__name__ == "sift_ds.kernels"
    fields = {f.name for f in dataclasses.fields(sift_ds.SiftConfig)}
    assert {"enabled", "criterion", "exit_layer", "keep_ratio", "warmup_steps", "scope", "kernel"} <= fields


def _site_packages() -> str:
    return next(p for p in site.getsitepackages() if os.path.isdir(os.path.join(p, "torch")))


def _run_isolated(code: str, pythonpath: str, cwd: str) -> subprocess.CompletedProcess:
    """``python -S``: no site processing, so the editable install's import hook is not active and only
    ``pythonpath`` (then the dependencies' site-packages) can provide sift_ds."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([pythonpath, _site_packages()]), DS_ACCELERATOR="cpu")
    return subprocess.run([sys.executable, "-S", "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


CHECK = ("import sift_ds, sift_ds.kernels, sift_ds.pretrain.job; "
         "print(sift_ds.kernels.__name__, sift_ds.kernels.__file__, sift_ds.pretrain.job.__file__)")


def test_bare_checkout_on_pythonpath_imports(tmp_path):
    """docs/usage.md's multi-node way: remote ranks put the checkout on PYTHONPATH, nothing installed."""
    checkout = tmp_path / "checkout"
    for part in ("sift_ds", "kernels"):
        shutil.copytree(os.path.join(REPO, part), checkout / part, ignore=shutil.ignore_patterns("__pycache__"))
    proc = _run_isolated(CHECK, str(checkout), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    name, kernels_file, job_file = proc.stdout.split()[-3:]
    assert name == "sift_ds.kernels"
    assert kernels_file == str(checkout / "kernels" / "__init__.py")
    assert job_file.startswith(str(checkout))


def test_installed_wheel_imports(tmp_path):
    source, wheel_dir, target = tmp_path / "source", tmp_path / "wheel", tmp_path / "site"
    for part in ("sift_ds", "kernels"):  # a copy, so that the build leaves nothing in the checkout
        shutil.copytree(os.path.join(REPO, part), source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("setup.py", "README.md"):
        shutil.copy(os.path.join(REPO, part), source / part)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheel_dir), str(source)],
                   check=True, timeout=300, capture_output=True)
    wheel = glob.glob(str(wheel_dir / "sift_ds-*.whl"))[0]
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), wheel], check=True, timeout=300,
                   capture_output=True)
    assert not (target / "kernels").exists(), "kernels/ must be installed as sift_ds.kernels only"
    proc = _run_isolated(CHECK, str(target), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-2] == str(target / "sift_ds" / "kernels" / "__init__.py")


def test_top_level_kernels_from_the_repository_root_is_inert():
    """From the repository root, ``kernels`` is importable; it must neither be a second copy of the
    kernels nor look like the unrelated package of that name to transformers' probe."""
    code = ("import kernels, transformers.models.bert.modeling_bert, sift_ds\n"
            "from transformers.utils.import_utils import is_kernels_available\n"
            "print(hasattr(kernels, '__file__'), hasattr(kernels, 'select_topk'), is_kernels_available(),"
            " sift_ds.kernels.__name__)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, DS_ACCELERATOR="cpu"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-4:] == ["False", "False", "False", "sift_ds.kernels"]


def _modules():
    for path in sorted(glob.glob(os.path.join(REPO, "sift_ds", "**", "*.py"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            source = f.read()
        yield os.path.relpath(path, REPO), source


@pytest.mark.parametrize("path,source", list(_modules()), ids=lambda v: v if v.endswith(".py") else "")
def test_module_structure(path, source):
    tree = ast.parse(source)
    assert ast.get_docstring(tree), f"{path} has no docstring saying what it owns"
    assert source.count("\n") <= LIBRARY_MAX_LINES, f"{path} has {source.count(chr(10))} lines"
    for func in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
        for node in ast.walk(func):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.startswith(OPTIONAL_IMPORTS), f"{path}:{node.lineno} imports {name} inside {func.name}"
