"""Studies anyone can re-run: the data is known by its content, not its path; the committed studies
hold no path of the machine that ran them and are accepted with the corpus anywhere; and no tracked
file names a machine path."""
import glob
import json
import os
import re
import shutil
import subprocess

import pytest

from launcher import REPO
from sift_ds import content_digest
from sift_ds.study import identity, preflight, runs
from sift_ds.study.arms import Arm, parse_arm

# Paths the project's own tools create on the machine they run on (benchmarks/gpu_check.py), not
# paths of the machine that wrote the file.
TOOL_PATHS = ("/tmp/site", "/tmp/gpu_check_torch_extensions", "/tmp/gpu_check_package")
MACHINE = re.compile(r"(?<![\w.<>-])/(?:work|root|home|tmp)/[^\s'\"`),\]]*")
CORPUS = os.path.join(os.path.dirname(REPO), "shared", "data", "linux_docs.jsonl.xz")


def test_the_data_is_known_by_content_not_by_path(tmp_path):
    config = tmp_path / "ds.json"
    config.write_text('{"train_micro_batch_size_per_gpu": 2}')
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    here, there = tmp_path / "a" / "corpus.txt", tmp_path / "b" / "renamed.txt"
    here.write_text("one document\n\nanother\n")
    shutil.copy(here, there)
    arms = [parse_arm("vanilla")]

    def stamp(out, data):
        plan = runs.plan(arms, [0], str(tmp_path / out))
        return preflight.portable(runs.record(plan[0], plan, runs.Settings("job.py", str(config), [], [str(data)])))
    first = stamp("out1", here)
    assert first == stamp("out2", there)  # the study and the corpus moved: the same run
    assert first["data_sha256"] == content_digest.data_digest([str(there)])
    there.write_text("other text\n")
    assert first != stamp("out2", there)  # another corpus under the same name: refused


def test_the_ds_config_is_known_by_meaning_not_by_bytes(tmp_path):
    """A ds_config edited only in notes, key order, old sift key names or the start_after_lr_peak
    permission is the same study config; a changed value is not. A run recorded before (with the
    sha256 of the file's bytes) is accepted while the file is unchanged, and refused once it changes."""
    def digest(config: dict) -> str:
        path = tmp_path / "ds.json"
        path.write_text(json.dumps(config))
        return identity.config_digest(str(path))
    base = {"train_micro_batch_size_per_gpu": 2, "sift": {"warmup_steps": 30, "keep_ratio": 0.5}}
    same = {"_comment": "a note", "sift": {"keep_ratio": 0.5, "selection_start_step": 30, "_why": "x",
                                           "start_after_lr_peak": True}, "train_micro_batch_size_per_gpu": 2}
    assert digest(base) == digest(same)
    assert digest(base) != digest({**base, "sift": {"warmup_steps": 30, "keep_ratio": 0.25}})
    assert digest(base) != digest({**base, "train_micro_batch_size_per_gpu": 4})

    config = tmp_path / "study.json"
    config.write_text(json.dumps(base))
    plan = runs.plan([parse_arm("vanilla")], [0], str(tmp_path / "out"))
    settings = runs.Settings("job.py", str(config), [], [])
    old = dict(runs.record(plan[0], plan, settings), ds_config_sha256=content_digest.file_digest(str(config)))
    os.makedirs(plan[0].directory)
    with open(plan[0].path("command.json"), "w") as f:
        json.dump(old, f)
    preflight.check_settings(plan, settings)  # the record of the bytes, the same bytes: accepted
    config.write_text(json.dumps(same))
    with pytest.raises(ValueError, match="was started with other settings"):
        preflight.check_settings(plan, runs.Settings("job.py", str(config), [], []))


def test_relocate_leaves_no_machine_path(tmp_path):
    text = ("--ds_config /x/wt/ds_configs/a.json --data /d/corpus.xz --out /s/out "
            "saved to /s/out/runs/v/seed0/tokenizer, cmd = /y/other/.venv/bin/python")
    got = identity.relocate(text.replace("/x/", "/work/").replace("/d/", "/work/data/").replace("/s/", "/tmp/")
                            .replace("/y/", "/home/"), "/tmp/out", REPO, ["/work/data/corpus.xz"])
    assert got == ("--ds_config ds_configs/a.json --data <data> --out <out> saved to <out>/runs/v/seed0/tokenizer, "
                   "cmd = .venv/bin/python")


def committed_studies():
    return sorted(os.path.dirname(p) for p in glob.glob(os.path.join(REPO, "docs", "results", "*", "study.json")))


def study_corpus(out):
    """The corpus a committed study ran on: the one its corpus.json manifest describes, where its
    run.sh builds it (runs/corpora/ of the checkout), else the study corpus in ../shared/data."""
    manifest = os.path.join(out, "corpus.json")
    if not os.path.exists(manifest):
        return CORPUS, "the study corpus is not at ../shared/data (docs/results.md, 'Study corpora')"
    with open(manifest, encoding="utf-8") as f:
        name = json.load(f)["file"]
    return (os.path.join(REPO, "runs", "corpora", name),
            f"runs/corpora/{name} is not built (launch/build_corpus.py --manifest {os.path.relpath(manifest, REPO)})")


@pytest.mark.parametrize("out", committed_studies(), ids=os.path.basename)
def test_a_committed_study_is_accepted_with_the_corpus_at_another_path(out, tmp_path):
    """Its command.json records name the data by content; the preflight accepts them with a copy of
    the corpus elsewhere (as a re-run of its run.sh on another machine would give it)."""
    corpus, missing = study_corpus(out)
    if not os.path.exists(corpus):
        pytest.skip(missing)
    with open(os.path.join(out, "study.json"), encoding="utf-8") as f:
        saved = json.load(f)
    words = saved["command"].split()
    config = os.path.join(REPO, words[words.index("--ds_config") + 1])
    plan = runs.plan([Arm(label, tuple(w), spec, *rest) for label, w, spec, *rest in saved["arms"]], saved["seeds"], out)
    stamps = [json.load(open(r.path("command.json"), encoding="utf-8")) for r in plan]
    assert all("<data>" in s["args"] and len(s["data_sha256"]) == 64 for s in stamps)
    copy = tmp_path / "elsewhere.jsonl.xz"
    shutil.copy(corpus, copy)
    script = os.path.join(REPO, "launch", "pretrain_gpt.py" if "llama" in config else "pretrain_bert.py")
    passthrough = words[words.index("--") + 1:] if "--" in words else []  # e.g. a shared --tokenizer
    # study.json names files of the study's own folder relative to the checkout; its run.sh gives them
    # as absolute paths (recorded as <out>/...)
    inside = os.path.relpath(out, REPO) + "/"
    passthrough = [os.path.join(REPO, w) if w.startswith(inside) else w for w in passthrough]
    preflight.check_settings(plan, runs.Settings(script, config, passthrough, [str(copy)]))


def test_no_tracked_file_names_a_machine_path():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    found = []
    for name in files.decode().split("\0"):
        path = os.path.join(REPO, name)
        if not name or not os.path.isfile(path) or name == "tests/test_study_portable.py":  # its own examples
            continue
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
        found += [f"{name}: {m}" for m in MACHINE.findall(text) if not m.startswith(TOOL_PATHS)]
    assert not found, found[:10]
