"""Each front-end refuses, in one line, a dependency below setup.py's floor (the oldest release
`make test-oldest` passes with), and SiftTrainer a Trainer without the hooks it overrides, which
would otherwise train on every row without selecting. The floors are read from the installed
metadata: they must be setup.py's own."""
import ast
import glob
import importlib.metadata
import inspect
import os

import pytest
import torch.utils.cpp_extension  # noqa: F401 - see below
from transformers import Trainer

from launch_helpers import CONFIGS, one_line_error
from launcher import REPO
from sift_ds import versions

# A CUDA build of torch on a machine without a CUDA runtime logs a warning the first time
# torch.utils.cpp_extension is imported (DeepSpeed imports it): imported above, at collection, so that
# torch's line is not inside a refusal whose one line the tests read.


def setup_py_floors() -> dict:
    """Every ``>=`` bound in setup.py's install_requires and extras, read from its source."""
    tree = ast.parse(open(os.path.join(REPO, "setup.py"), encoding="utf-8").read())
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg in ("install_requires", "extras_require"):
            value = ast.literal_eval(node.value)
            for item in value if isinstance(value, list) else [i for group in value.values() for i in group]:
                name, _, rest = item.partition(">=")
                if rest:
                    found[versions.canonical(name)] = rest.split(",")[0]
    return found


def older(monkeypatch, package: str, version: str):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: version if name == package else real(name))


def test_the_floors_checked_are_setup_pys():
    assert {k: str(v) for k, v in versions.floors().items()} == setup_py_floors()
    assert {"transformers", "deepspeed", "megatron-core", "accelerate"} <= set(setup_py_floors())


def test_sift_trainer_refuses_an_older_transformers(monkeypatch):
    from sift_ds.hf import SiftTrainer

    floor = versions.floors()["transformers"]
    older(monkeypatch, "transformers", "4.40.0")
    with pytest.raises(versions.UnsupportedDependency) as err:
        SiftTrainer(model=None, args=None)
    message = str(err.value)
    assert "\n" not in message and f"SiftTrainer needs transformers >= {floor}" in message and "4.40.0" in message


def test_a_trainer_without_the_hooks_sift_trainer_overrides_is_refused():
    versions.require_trainer_hooks(Trainer)  # today's Trainer has them all

    class OldTrainer(Trainer):  # transformers before get_batch_samples took the device
        def get_batch_samples(self, epoch_iterator, num_batches):
            return super().get_batch_samples(epoch_iterator, num_batches, None)

    with pytest.raises(versions.UnsupportedDependency) as err:
        versions.require_trainer_hooks(OldTrainer)
    assert "get_batch_samples(epoch_iterator, num_batches, device)" in str(err.value)
    assert "train on every row, unselected" in str(err.value)


def test_the_deepspeed_job_refuses_an_older_deepspeed_in_one_line(tmp_path, monkeypatch, capsys):
    older(monkeypatch, "deepspeed", "0.14.0")
    err = one_line_error(capsys, ["--ds_config", os.path.join(CONFIGS, "tiny_cpu_sift.json"), "--output_dir",
                                  str(tmp_path / "run"), "--check_only"])
    assert f"pretrain_bert.py needs deepspeed >= {versions.floors()['deepspeed']}" in err and "0.14.0" in err


def test_the_megatron_front_end_refuses_an_older_megatron_core(monkeypatch):
    pytest.importorskip("megatron.core", reason="needs the megatron-core test extra")
    from sift_ds import SiftConfig
    from sift_ds.megatron import Sift

    older(monkeypatch, "megatron-core", "0.15.0")
    with pytest.raises(versions.UnsupportedDependency, match=r"sift_ds\.megatron needs megatron-core >= "):
        Sift(SiftConfig(exit_layer=1))


@pytest.fixture
def transformers_torch_check():
    """transformers caches whether it uses the installed torch: cleared around a test that fakes torch."""
    from transformers.utils import import_utils

    import_utils.is_torch_available.cache_clear()
    yield import_utils.is_torch_available
    import_utils.is_torch_available.cache_clear()


def test_below_torchs_floor_each_front_end_refuses_in_one_line(monkeypatch, transformers_torch_check, tmp_path,
                                                               capsys):
    """A torch below setup.py's floor (one that transformers itself still uses) is refused in one line,
    naming torch; the floor torch is one the installed transformers uses, when that is its own floor."""
    floor = versions.floors()["torch"]
    if versions.installed_version("transformers") == versions.floors()["transformers"]:  # make test-oldest
        older(monkeypatch, "torch", f"{floor.major}.{floor.minor}.0")
        assert transformers_torch_check()
        transformers_torch_check.cache_clear()
    below = f"{floor.major}.{floor.minor - 1}.0"  # the last minor release before the floor
    older(monkeypatch, "torch", below)
    assert floor >= versions.Version("2.8")  # the oldest torch whose wheel installs with triton's floor
    from sift_ds.hf import SiftTrainer

    with pytest.raises(versions.UnsupportedDependency, match=f"SiftTrainer needs torch >= {floor} .* {below}"):
        SiftTrainer(model=None, args=None)
    err = one_line_error(capsys, ["--ds_config", os.path.join(CONFIGS, "tiny_cpu_sift.json"), "--output_dir",
                                  str(tmp_path / "run"), "--check_only"])
    assert f"pretrain_bert.py needs torch >= {floor}" in err and below in err


def test_a_torch_that_transformers_disables_is_refused_in_one_line(monkeypatch, transformers_torch_check):
    """Above setup.py's floor but below the installed transformers' own (it would disable torch, and every
    model class would fail later, far from the cause)."""
    releases = ["2.4.0", "2.5.0", "2.6.0", "2.7.0", "2.8.0", "2.9.0"]

    def uses(torch_version):
        older(monkeypatch, "torch", torch_version)
        transformers_torch_check.cache_clear()
        return transformers_torch_check()

    own = next(v for v in releases if uses(v))  # transformers' own floor, probed
    if own == releases[0]:
        pytest.skip("the installed transformers uses every torch probed")
    below = releases[releases.index(own) - 1]
    assert not uses(below)
    with pytest.raises(versions.UnsupportedDependency) as err:
        versions.require_torch_for_transformers("sift_ds.initialize")
    message = str(err.value)
    assert "\n" not in message and f"does not use torch {below}" in message and "upgrade torch" in message


def triton_language_keywords() -> dict:
    """{name: keywords} of every ``tl.<name>(..., keyword=...)`` call in the Triton kernels' source."""
    found = {}
    for path in sorted(glob.glob(os.path.join(REPO, "kernels", "ops", "*.py"))):
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "tl"):
                found.setdefault(node.func.attr, set()).update(k.arg for k in node.keywords if k.arg)
    return found


def test_the_kernels_pass_triton_only_keywords_it_takes():
    """Under TRITON_INTERPRET=1 ``tl.range`` takes any keyword; Triton's compiler only those of its own
    signature (``flatten`` from 3.3, setup.py's floor). Every keyword the kernels pass to triton.language
    must be one the installed release takes (read from triton.language.core and its siblings, which the
    interpreter does not patch)."""
    triton = pytest.importorskip("triton")
    import triton.language as tl

    used = triton_language_keywords()
    assert "flatten" in used["range"] and "mask" in used["load"]
    refused = []
    for name, keywords in sorted(used.items()):
        target = next(getattr(m, name) for m in (tl.core, tl.standard, tl.math, tl) if hasattr(m, name))
        parameters = inspect.signature(target).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            refused += [f"tl.{name}({k}=...)" for k in sorted(keywords - set(parameters))]
    assert not refused, f"triton {triton.__version__} takes none of {refused}: raise triton's floor in setup.py"
    assert versions.floors()["triton"] >= versions.Version("3.3")
