"""Each front-end refuses, in one line, a dependency below setup.py's floor (the oldest release
`make test-oldest` passes with), and SiftTrainer a Trainer without the hooks it overrides, which
would otherwise train on every row without selecting. The floors are read from the installed
metadata: they must be setup.py's own."""
import ast
import importlib.metadata
import os

import pytest
from transformers import Trainer

from launch_helpers import CONFIGS, one_line_error
from launcher import REPO
from sift_ds import versions


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


def test_torchs_floor_is_one_the_floor_transformers_uses(monkeypatch, transformers_torch_check, tmp_path, capsys):
    """setup.py's torch floor is one that transformers (the installed one, itself at or above setup.py's
    floor) does not disable; below it each front-end refuses in one line, naming torch."""
    floor = versions.floors()["torch"]
    older(monkeypatch, "torch", "2.3.1")  # the last release before the floor
    assert floor == versions.Version("2.4") and not transformers_torch_check()
    from sift_ds.hf import SiftTrainer

    with pytest.raises(versions.UnsupportedDependency, match=f"SiftTrainer needs torch >= {floor} .* 2.3.1"):
        SiftTrainer(model=None, args=None)
    err = one_line_error(capsys, ["--ds_config", os.path.join(CONFIGS, "tiny_cpu_sift.json"), "--output_dir",
                                  str(tmp_path / "run"), "--check_only"])
    assert f"pretrain_bert.py needs torch >= {floor}" in err and "2.3.1" in err


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
        pytest.skip("the installed transformers uses torch from setup.py's floor on")
    below = releases[releases.index(own) - 1]
    assert not uses(below)
    with pytest.raises(versions.UnsupportedDependency) as err:
        versions.require(("torch", "transformers"), "sift_ds.initialize")
    message = str(err.value)
    assert "\n" not in message and f"does not use torch {below}" in message and "upgrade torch" in message
