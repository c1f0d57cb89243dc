"""Issue 8, sections 1 and 5, without a launcher: which checkpoint a resume picks (never an
incomplete one), one-line errors for a corrupt, mismatched or unverifiable checkpoint, and the
sha256 manifest that is checked before anything is unpickled (a crafted pickle is refused, and runs
only under the explicit trust flag)."""
import hashlib
import json
import os
import pickle

import pytest

from launch_helpers import load_cli, one_line_error, read_config, run_python, write_config
from sift_ds.pretrain import checkpoint, manifest
from sift_ds.pretrain.identity import RunIdentity, write_identity
from sift_ds.pretrain.resume import find_resume

cli = load_cli()


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)


def make_tag(save_dir, step, complete=True, run=None, files=None):
    tag = save_dir / f"global_step{step}"
    tag.mkdir(parents=True)
    for name, data in (files or {"mp_rank_00_model_states.pt": b"model", "zero_pp_rank_0_mp_rank_00_optim_states.pt":
                                 b"optimizer" * 10}).items():
        (tag / name).write_bytes(data)
    if complete:
        manifest.write_manifest(str(tag), tag.name, step, run)
    return tag


def test_latest_that_names_an_incomplete_checkpoint_falls_back_to_the_newest_complete(tmp_path):
    """The issue's crash: `latest` moved to step 50 before rank 1 finished its shard."""
    save_dir = tmp_path / "run" / "checkpoints"
    make_tag(save_dir, 40)
    make_tag(save_dir, 50, complete=False)
    for latest in ("global_step40", "global_step50", "", "global_step99", None):
        if latest is None:
            (save_dir / "latest").unlink()
        else:
            (save_dir / "latest").write_text(latest)
        point = find_resume("auto", str(tmp_path / "run"))
        assert (point.load_dir, point.tag) == (str(save_dir), "global_step40"), latest
        assert any(w.startswith(f"skipped incomplete checkpoint {save_dir}/global_step50: no sift_manifest.json")
                   for w in point.warnings)


def test_a_truncated_or_missing_file_makes_a_checkpoint_incomplete(tmp_path):
    save_dir = tmp_path / "checkpoints"
    make_tag(save_dir, 2)
    tag = make_tag(save_dir, 4)
    (save_dir / "latest").write_text("global_step4")
    (tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"")  # killed while writing
    point = find_resume(str(save_dir), "elsewhere")
    assert point.tag == "global_step2"
    assert "zero_pp_rank_0_mp_rank_00_optim_states.pt has 0 bytes, the manifest says 90" in point.warnings[0]
    with pytest.raises(ValueError, match="incomplete checkpoint: zero_pp_rank_0_mp_rank_00_optim_states.pt has 0"):
        find_resume(str(tag), "elsewhere")
    os.remove(tag / "mp_rank_00_model_states.pt")
    assert manifest.incomplete_reason(str(tag)).startswith("mp_rank_00_model_states.pt is missing")


def test_auto_without_a_complete_checkpoint_starts_fresh_and_says_why(tmp_path):
    out = tmp_path / "run"
    make_tag(out / "checkpoints", 4, complete=False)
    (out / "checkpoints" / "latest").write_text("global_step4")
    write_identity(str(out), RunIdentity("r1"))  # the run's first save was interrupted
    assert find_resume("auto", str(out)) is None
    config = write_config(tmp_path / "c.json", read_config("tiny_cpu_sift.json"))
    plan = cli.resolve(["--ds_config", config, "--output_dir", str(out), "--resume", "auto"])
    assert plan.resume is None and any("starting fresh" in n for n in plan.notes)
    assert any("skipped incomplete checkpoint" in w and "global_step4" in w for w in plan.warnings)
    with pytest.raises(ValueError, match="no complete checkpoint in"):
        find_resume(str(out), "elsewhere")


def test_a_checkpoint_of_another_model_is_one_line_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    model = {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024,
             "max_position_embeddings": 512, "type_vocab_size": 2}
    make_tag(out / "checkpoints", 4, run={"model": "mini", "model_config": model, "seq_len": 128, "objective": "mlm",
                                          "run_id": "r1"})
    (out / "checkpoints" / "latest").write_text("global_step4")
    write_identity(str(out), RunIdentity("r1"))
    config = write_config(tmp_path / "c.json", read_config("tiny_cpu_sift.json"))  # --model tiny
    with pytest.raises(SystemExit) as exc:
        cli.resolve(["--ds_config", config, "--output_dir", str(out), "--resume", "auto"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err]
    assert "the checkpoint does not match this run: num_hidden_layers 4 vs 2, hidden_size 256 vs 64" in err
    assert "(it was trained with --model mini)" in err


def test_digests_are_verified_and_an_unlisted_file_is_refused(tmp_path, caplog):
    tag = make_tag(tmp_path, 4)
    checkpoint.verify(str(tmp_path), "global_step4")  # intact
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"MODEL")  # same size, other bytes
    with pytest.raises(ValueError, match=r"fails its sha256 manifest \(mp_rank_00_model_states.pt\).*"
                                         r"--trust_checkpoint true"):
        checkpoint.verify(str(tmp_path), "global_step4")
    with caplog.at_level("WARNING"):
        checkpoint.verify(str(tmp_path), "global_step4", trust=True)
    assert "loading it because of --trust_checkpoint" in caplog.text
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"model")
    (tag / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"extra")
    with pytest.raises(ValueError, match=r"zero_pp_rank_1_mp_rank_00_optim_states.pt \(not in the manifest\)"):
        checkpoint.verify(str(tmp_path), "global_step4")


def test_a_load_deepspeed_cannot_do_is_one_line(tmp_path):
    class Engine:
        def load_checkpoint(self, load_dir, tag):
            raise RuntimeError("Error(s) in loading state_dict for BertForMaskedLM:\n\tsize mismatch for ...")

    with pytest.raises(ValueError) as err:
        checkpoint.load(Engine(), str(tmp_path), "global_step4")
    assert str(err.value) == (f"--resume: cannot load checkpoint {tmp_path}/global_step4: RuntimeError: Error(s) in "
                              "loading state_dict for BertForMaskedLM:")


class Payload:
    """Unpickling this creates a file: what a crafted checkpoint could do with any code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def crafted_checkpoint(tmp_path, marker):
    """A tag whose model file is a malicious pickle, with a manifest of the same size but another digest
    (a swapped file); and one without a manifest at all."""
    payload = pickle.dumps(Payload(str(marker)))
    swapped = make_tag(tmp_path / "swapped", 4, files={"mp_rank_00_model_states.pt": b"\0" * len(payload)})
    (swapped / "mp_rank_00_model_states.pt").write_bytes(payload)
    bare = make_tag(tmp_path / "bare", 4, complete=False, files={"mp_rank_00_model_states.pt": payload})
    return swapped, bare


def test_a_crafted_checkpoint_is_refused_before_it_is_unpickled(tmp_path, capsys):
    marker = tmp_path / "payload_ran"
    swapped, bare = crafted_checkpoint(tmp_path, marker)
    config = read_config("tiny_cpu_sift.json")
    config["pretrain"].update(seq_len=64, vocab_size=1000, cache_dir=str(tmp_path / "cache"))
    config = write_config(tmp_path / "c.json", config)
    # A tag without a manifest is refused by the job's start-up checks (in process here), a swapped file
    # when the run verifies the digests.
    argv = ["--ds_config", config, "--output_dir", str(tmp_path / "out"), "--resume"]
    last = one_line_error(capsys, argv + [str(bare)])
    assert last.startswith("pretrain_bert.py: error: --resume") and "no sift_manifest.json" in last, last
    assert "--trust_checkpoint true" in last and not marker.exists()
    proc = run_python(argv + [swapped])
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("pretrain_bert.py: error: --resume"), last
    assert "fails its sha256 manifest (mp_rank_00_model_states.pt)" in last, last
    assert "--trust_checkpoint true" in last and "Traceback" not in proc.stderr
    assert not marker.exists()
    # A manifest rewritten to match proves integrity, not origin: the weights-only load refuses the
    # payload all the same, with or without --trust_checkpoint.
    manifest.write_manifest(str(swapped), swapped.name, 4)
    proc = run_python(["--ds_config", config, "--output_dir", tmp_path / "out", "--resume", swapped], timeout=300)
    assert not marker.exists(), proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last.startswith(f"pretrain_bert.py: error: --resume: checkpoint {swapped} holds something other than "
                           "tensors and plain data, and checkpoints are loaded weights-only"), last


def test_trust_is_a_command_line_decision_only(tmp_path, capsys):
    config = read_config("tiny_cpu_sift.json")
    config["pretrain"]["trust_checkpoint"] = True
    with pytest.raises(SystemExit):
        cli.parse_args(["--ds_config", write_config(tmp_path / "c.json", config)])
    assert "unknown key 'trust_checkpoint'" in capsys.readouterr().err


def test_the_manifest_lists_every_file_with_its_digest(tmp_path):
    tag = make_tag(tmp_path, 7, run={"seq_len": 64})
    written = json.loads((tag / manifest.MANIFEST).read_text())
    assert written["step"] == 7 and written["run"] == {"seq_len": 64} and written["tag"] == "global_step7"
    assert written["files"]["mp_rank_00_model_states.pt"] == {"bytes": 5, "sha256": hashlib.sha256(b"model").hexdigest()}
    assert set(written["files"]) == {"mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"}
