"""The asynchronous-convergence study's runner (launch/multitask_study.py, sift_ds/study/multitask_*.py)
on a tiny synthetic corpus: every arm for a few steps through the runner's API, its output files, the
report's numbers against a hand computation, and one-line refusals. No study runs here."""
import json
import math
import os

import pytest

from launch_helpers import load_cli
from launcher import REPO
from sift_ds.study import multitask_prep, multitask_report
from sift_ds.study.multitask_arms import all_arms, parse
from sift_ds.study.multitask_data import TASKS
from sift_ds.study.multitask_run import Settings, load_result, run

TOKENIZER = os.path.join(REPO, "ds_configs", "tokenizers", "pydoc_wordpiece_4096")
TINY = Settings(layers=1, hidden=32, max_len=32, steps=3, batch=4, eval_every=1, eval_batch=16, patience=1,
                min_delta=1.0)  # no accuracy gains by more than 1: every watched task converges at step 2


def corpus(path):
    docs = []
    for i in range(60):  # 2 documents go to validation and 1 to test (CRC-32 of the path)
        section = ("mm", "sound", "process")[i % 3]
        prefix = "translations/it_IT/" if i % 4 == 0 else ""
        text = (f"Doc {i} opens here. It then goes on about {section}. A third sentence ends it.\n\n"
                f"Run this::\n\n    $ make {section}{i}\n    $ echo done\n")
        docs.append({"id": f"{prefix}{section}/doc{i}.rst.txt", "text": text})
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multitask_study")
    out = tmp / "study"
    summary = multitask_prep.prepare(corpus(tmp / "docs.jsonl"), TOKENIZER, str(out / "cache" / "data"), TINY.max_len,
                                     train_examples=50, validation_examples=None, sections=2)
    return out, summary


def test_prepared_data(prepared):
    out, summary = prepared
    splits = multitask_prep.load(str(out / "cache" / "data"))
    assert summary["classes"] == {"section": 3, "code": 2, "translated": 2, "order": 2}
    assert summary["examples"]["train"] == 50 and len(splits["train"]) == 50
    assert splits["train"]["example_index"] == list(range(50))
    assert summary["examples"]["validation"] > 0 and summary["examples"]["test"] > 0
    assert all(len(ids) == TINY.max_len for ids in splits["test"]["input_ids"])
    again = multitask_prep.prepare(summary["settings"]["corpus"], TOKENIZER, str(out / "cache" / "data"),
                                   TINY.max_len, 50, None, 2)
    assert again == summary  # the same settings: kept


def test_every_arm_runs_and_writes_per_task_metrics(prepared):
    out, summary = prepared
    splits = multitask_prep.load(str(out / "cache" / "data"))
    script = load_cli(os.path.join(REPO, "launch", "multitask_study.py"))
    for name, arm in all_arms().items():
        folder = script.run_folder(str(out), name, 0)
        result = run(arm, 0, splits, summary["classes"], summary["vocab_size"], TINY, folder)
        assert load_result(folder) == json.loads(json.dumps(result))
        assert result["steps"] == 3 and set(result["best"]) == set(result["final"]) == set(arm.tasks)
        for task in arm.tasks:
            best, final = result["best"][task], result["final"][task]
            assert 0 <= best["test_accuracy"] <= 1 and 0 <= final["test_accuracy"] <= 1
            assert best["step"] in (1, 2, 3) and math.isfinite(final["test_loss"])
        records = [json.loads(line) for line in open(os.path.join(folder, "metrics.jsonl"), encoding="utf-8")]
        evals = [r for r in records if "eval_loss" in r]
        assert [r["step"] for r in evals] == [1, 2, 3]
        assert all(f"eval_{t}_accuracy" in r for r in evals for t in arm.tasks)
        assert result["final"][arm.tasks[0]]["val_accuracy"] == evals[-1][f"eval_{arm.tasks[0]}_accuracy"]
        best = max(evals, key=lambda r: r[f"eval_{arm.tasks[-1]}_accuracy"])  # the first of the best
        assert result["best"][arm.tasks[-1]]["step"] == best["step"]
        if arm.teacher:  # converged at the second evaluation, distilled at step 3
            assert result["converged_step"] == {t: 2 for t in arm.tasks}
            assert [r for r in records if "loss" in r and "eval_loss" not in r][-1][f"{arm.tasks[0]}_distill_share"] == 1
        else:
            assert result["converged_step"] == {}
        if arm.single:  # trained on the examples its task labels only
            assert result["train_examples"] == sum(v for k, v in summary["labels"]["train"][arm.tasks[0]].items()
                                                   if k != "-100")
    argv = ["--out", str(out), "--seeds", "1", "--report_only"] + sum(
        ([f"--{k}", str(v)] for k, v in TINY.__dict__.items()), [])
    assert script.main(argv) == 0
    report = (out / "report.md").read_text()
    assert "Runs not finished: none." in report and "| single-task | 1 |" in report and "| ac_cached | uniform |" in report


def result(arm, seed, tasks, best, final, train_s, converged=None):
    return {"arm": arm, "seed": seed, "tasks": list(tasks), "train_s": train_s,
            "best": {t: {"test_accuracy": b, "step": 10 * (i + 1)} for i, (t, b) in enumerate(zip(tasks, best))},
            "final": {t: {"test_accuracy": f} for t, f in zip(tasks, final)}, "converged_step": converged or {}}


def test_report_numbers_against_a_hand_computation():
    tasks = ("a", "b")
    results = [result("uniform", 0, tasks, [0.5, 0.7], [0.4, 0.6], 10.0),
               result("uniform", 1, tasks, [0.7, 0.9], [0.6, 0.8], 14.0),
               result("ac_frozen", 0, tasks, [0.6, 0.7], [0.6, 0.7], 12.0, {"a": 20, "b": None}),
               result("ac_frozen", 1, tasks, [0.8, 0.9], [0.7, 0.9], 12.0, {"a": 40, "b": None}),
               result("single_a", 0, ("a",), [0.9], [0.8], 5.0), result("single_b", 0, ("b",), [0.3], [0.2], 6.0),
               result("single_a", 1, ("a",), [0.9], [0.8], 5.0)]  # seed 1 lacks single_b: no single-task row
    # uniform's final averages: 0.5 and 0.7 -> mean 0.6, sd 0.1414, t(0.975, 1) = 12.706 -> half 1.2706
    mean, half, n = multitask_report.interval([0.5, 0.7])
    assert n == 2 and mean == pytest.approx(0.6) and half == pytest.approx(12.7062 * 0.141421 / 1.414214, rel=1e-4)
    text = "\n".join(multitask_report.markdown(results, tasks, ["uniform", "ac_frozen", "single-task"]))
    assert "| uniform | 2 | 50.0 ± 127.1 | 70.0 ± 127.1 | 60.0 ± 127.1 |" in text  # at the end
    assert "| uniform | 2 | 60.0 ± 127.1 | 80.0 ± 127.1 | 70.0 ± 127.1 |" in text  # at the best points
    assert "| single-task | 1 | 90.0 (1 seed) | 30.0 (1 seed) | 60.0 (1 seed) |" in text
    assert "| uniform | 2 | 12 ± 25 |" in text and "| single-task | 1 | 11 (1 seed) |" in text
    assert "| ac_frozen | best 10 ± 0; converged 30 ± 127 in 2/2 | best 20 ± 0; converged never in 0/2 |" in text
    rows = multitask_report.gains(results, tasks, ["ac_frozen"], ["uniform"])
    # final: ac 0.65, 0.8 against uniform 0.5, 0.7 -> differences 0.15, 0.1
    (_, _, point, diff, base), = [r for r in rows if r[2] == "final"]
    assert diff == pytest.approx([0.15, 0.1]) and base == pytest.approx([0.5, 0.7])
    table = "\n".join(multitask_report.gains_markdown(rows))
    assert "| ac_frozen | uniform | at the end | 12.50 ± 31.77 | 14.14 | within noise |" in table


def test_refusals_are_one_line(tmp_path, capsys):
    script = load_cli(os.path.join(REPO, "launch", "multitask_study.py"))
    with pytest.raises(ValueError, match=r"^--arms: unknown arm 'mtl' \(known: uniform, "):
        parse("uniform,mtl")
    assert [a.name for a in parse("single,uniform")] == [f"single_{t}" for t in TASKS] + ["uniform"]
    for argv, message in ((["--corpus", str(tmp_path / "none.jsonl")], f"--corpus {tmp_path / 'none.jsonl'}: no such file"),
                          (["--corpus", __file__, "--patience", "0"], "--patience must be >= 1, got 0"),
                          (["--corpus", __file__, "--arms", "x"], "--arms: unknown arm 'x'")):
        assert script.main(["--out", str(tmp_path / "o"), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"multitask_study.py: error: {message}") and err.count("\n") == 1
