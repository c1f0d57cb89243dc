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
# ``ops.triton_*`` (sift_ds.kernels.ops, relative): the Triton kernels, which import triton at module level.
OPTIONAL_IMPORTS = ("triton", "ops.triton_", "apex", "torch.utils.tensorboard", "matplotlib", "importlib", "megatron")
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


CHECK = ("import sift_ds, sift_ds.kernels, sift_ds.kernels.ops.triton_scorer, sift_ds.pretrain.job; "
         "print(sift_ds.kernels.__name__, sift_ds.kernels.ops.__file__, sift_ds.pretrain.job.__file__)")


def _copy_sources(destination):
    for part in ("sift_ds", "kernels"):
        shutil.copytree(os.path.join(REPO, part), destination / part, ignore=shutil.ignore_patterns("__pycache__"))


def test_bare_checkout_on_pythonpath_says_to_install(tmp_path):
    """A checkout on PYTHONPATH lacks the Triton kernels (setup.py maps kernels/ops into the package):
    ``import sift_ds`` fails with one line that says what to do, and never imports a top-level ``kernels``."""
    checkout = tmp_path / "checkout"
    _copy_sources(checkout)
    proc = _run_isolated(CHECK, str(checkout), cwd=str(tmp_path))
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: sift_ds.kernels.ops") and "pip install -e" in last, last


def test_installed_wheel_imports(tmp_path):
    source, wheel_dir, target = tmp_path / "source", tmp_path / "wheel", tmp_path / "site"
    _copy_sources(source)  # a copy, so that the build leaves nothing in the checkout
    for part in ("setup.py", "README.md"):
        shutil.copy(os.path.join(REPO, part), source / part)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheel_dir), str(source)],
                   check=True, timeout=300, capture_output=True)
    wheel = glob.glob(str(wheel_dir / "sift_ds-*.whl"))[0]
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), wheel], check=True, timeout=300,
                   capture_output=True)
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info")) == ["sift_ds"]
    proc = _run_isolated(CHECK, str(target), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-2] == str(target / "sift_ds" / "kernels" / "ops" / "__init__.py")


def test_editable_install_maps_the_kernels_without_a_top_level_kernels():
    """The editable install (what ``make setup`` makes) serves sift_ds.kernels.ops from kernels/ops, and
    no top-level ``kernels`` from the checkout, wherever Python starts."""
    code = ("import importlib.util, sift_ds.kernels.ops.triton_scorer as t\n"
            "spec = importlib.util.find_spec('kernels')\n"
            "print(t.__file__, spec.origin if spec else None)")
    proc = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, DS_ACCELERATOR="cpu"))
    assert proc.returncode == 0, proc.stderr
    scorer, kernels_origin = proc.stdout.split()[-2:]
    assert scorer == os.path.join(REPO, "kernels", "ops", "triton_scorer.py")
    assert not kernels_origin.startswith(os.path.join(REPO, "kernels")), kernels_origin


def test_no_top_level_name_of_the_repository_belongs_to_an_installed_package(monkeypatch):
    """What a checkout puts on sys.path (the root for ``python -c`` / ``-m``, tests/, benchmarks/, launch/
    for their scripts) names no module of another installed distribution: nothing here can shadow one.
    The root is on sys.path here as under ``python -m pytest``: the checkout's own sift_ds.egg-info then
    reads as a second copy of sift_ds's metadata, which is still sift_ds and no other distribution."""
    import importlib.metadata
    monkeypatch.syspath_prepend(REPO)
    owners = {name: sorted(set(dists)) for name, dists in importlib.metadata.packages_distributions().items()
              if set(dists) != {"sift_ds"}}
    clashes = []
    for folder in (".", "tests", "benchmarks", "launch", "tests/dist_scripts", "tests/child_site"):
        for entry in os.listdir(os.path.join(REPO, folder)):
            path = os.path.join(REPO, folder, entry)
            name = entry[:-3] if entry.endswith(".py") else entry if os.path.isdir(path) else None
            if name and name in owners and name != "sitecustomize":
                importable = not os.path.isdir(path) or os.path.isfile(os.path.join(path, "__init__.py"))
                if importable or name != "kernels" or folder != ".":
                    clashes.append((os.path.join(folder, entry), owners[name]))
    assert not clashes, clashes
    # kernels/ is the one deliberate exception: a folder without __init__.py (a namespace portion at most),
    # which never wins over a regular package of that name; test_from_the_repository_root checks it.
    assert not os.path.exists(os.path.join(REPO, "kernels", "__init__.py"))


# ---------------------------------------------------------------- from the repository root
# The root is on sys.path whenever Python starts there with -c or -m. Both with Hugging Face's
# ``kernels`` (which transformers >= 5.25 requires) and without it (an environment that is the
# project's venv minus that distribution), everything must work and ``import kernels`` must never be
# this checkout's code.
ROOT_CHECK = r"""
import importlib.metadata, json, sys
import torch
import transformers.activations
from transformers import BertConfig, BertForMaskedLM
from transformers.utils.import_utils import is_kernels_available
import sift_ds
from sift_ds.selection import select

torch.manual_seed(0)
model = BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=32)).eval()
ids = torch.randint(5, 64, (8, 16))
labels = torch.full_like(ids, -100)
labels[:, 1::3] = ids[:, 1::3]
batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
config = sift_ds.SiftConfig(criterion="entropy", exit_layer=1, kernel="torch", selection_start_step=0)
sel = select(sift_ds.detect_adapter(model), config, batch, step=0, micro_step=0, keep=4)
with torch.no_grad():  # independent reference: HF's own layer-1 hidden states through its own MLM head, float64
    hidden = model(input_ids=ids, attention_mask=batch["attention_mask"], output_hidden_states=True).hidden_states[1]
    logp = model.cls.double()(hidden.double()).log_softmax(-1)
entropy = -(logp.exp() * logp).sum(-1)
reference = torch.stack([entropy[i][labels[i] != -100].mean() for i in range(8)])
try:
    import kernels
    where = getattr(kernels, "__file__", None) or list(getattr(kernels, "__path__", []))
except ModuleNotFoundError:
    kernels, where = None, None
try:
    hf_version = importlib.metadata.version("kernels")
except importlib.metadata.PackageNotFoundError:
    hf_version = None
print(json.dumps({"selected": sel.indices.tolist(), "expected": sorted(reference.topk(4).indices.tolist()),
                  "max_err": (sel.scores.double() - reference).abs().max().item(), "kernels_where": where,
                  "kernels_cuda_properties": hasattr(kernels, "CUDAProperties"), "hf_kernels": hf_version,
                  "kernels_available": is_kernels_available(), "transformers": transformers.__version__}))
"""


@pytest.fixture(scope="module")
def python_without_hf_kernels(tmp_path_factory):
    """A real environment: a new venv whose site-packages links every entry of this one's except
    Hugging Face's ``kernels`` distribution (its .pth files, the editable install's among them, included)."""
    import sysconfig
    env_dir = tmp_path_factory.mktemp("no_hf_kernels") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    python = env_dir / "bin" / "python"
    target = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            check=True, capture_output=True, text=True).stdout.strip()
    source = sysconfig.get_paths()["purelib"]
    for entry in os.listdir(source):
        if entry == "kernels" or (entry.startswith("kernels-") and entry.endswith(".dist-info")):
            continue
        os.symlink(os.path.join(source, entry), os.path.join(target, entry))
    return str(python)


@pytest.mark.parametrize("hf_kernels", ["installed", "absent"])
def test_from_the_repository_root(hf_kernels, request):
    import json
    python = sys.executable if hf_kernels == "installed" else request.getfixturevalue("python_without_hf_kernels")
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    proc = subprocess.run([python, "-c", ROOT_CHECK], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["selected"] == got["expected"] and got["max_err"] < 1e-5, got
    if hf_kernels == "installed":
        assert got["hf_kernels"] and got["kernels_cuda_properties"], got  # Hugging Face's package
        assert got["kernels_where"].endswith(os.path.join("site-packages", "kernels", "__init__.py")), got
    else:
        assert got["hf_kernels"] is None and not got["kernels_available"], got
        # Python may see kernels/ as a namespace portion (a folder without __init__.py): no file of ours
        # runs, no name is defined, and transformers reports no `kernels`.
        assert got["kernels_where"] in (None, [os.path.join(REPO, "kernels")]), got
        assert not got["kernels_cuda_properties"]
    helped = subprocess.run([python, "launch/run_mlm_sift.py", "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env=env)
    assert helped.returncode == 0 and "--sift_config" in helped.stdout, helped.stderr[-3000:]


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


def _subpackage_imports() -> dict:
    """sift_ds's subpackages (folders) -> the other subpackages their modules import, from the source."""
    root = os.path.join(REPO, "sift_ds")
    subpackages = {d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, "__init__.py"))}
    edges = {name: set() for name in subpackages}
    for path, source in _modules():
        parts = path[:-3].split(os.sep)  # sift_ds/<sub>/.../<module>
        if len(parts) < 3 or parts[1] not in subpackages:
            continue
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = parts[:len(parts) - node.level] if node.level else []
            target = base + (node.module.split(".") if node.module else [])
            if target[:1] != ["sift_ds"]:
                continue
            named = target[1:2] or [alias.name for alias in node.names]
            edges[parts[1]] |= {name for name in named if name in subpackages and name != parts[1]}
    return edges


def test_no_subpackage_imports_one_that_imports_it_back():
    """The subpackages form layers (a cycle would make each import the other's half-built module):
    e.g. the pretraining job imports the score file's format, and the offline scoring the job."""
    edges = _subpackage_imports()
    assert edges["offline"] >= {"pretrain"} and edges["prepare"] >= {"pretrain", "shards"}  # the walk sees imports

    def reachable(start):
        seen, todo = set(), list(edges[start])
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(edges[name])
        return seen

    cycles = sorted(name for name in edges if name in reachable(name))
    assert not cycles, {name: sorted(edges[name]) for name in cycles}
