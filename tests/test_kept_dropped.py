"""The kept-against-dropped comparison (sift_ds.study.kept_dropped) on crafted blocks: each detector
on texts that are and are not code, markup or tables, the block measures against independent
counts, and the table's means over a known kept mask."""
from collections import Counter

import numpy as np
import pytest

from sift_ds.study.kept_dropped import (MEASURES, block_profile, compare, is_code, is_markup, is_non_latin, is_table,
                                      kept_agreement, report)

PROSE = "the kernel schedules tasks on every processor, and the scheduler balances the load between them."
CODE = "static int probe ( struct device * dev ) { if ( ! dev ) return - einval ; dev _ set _ drvdata ( dev , p ) ; }"
HTML = "< html > < body > < p > see the < a href = x > manual < / a > < / p >"
ROFF = ". TH LS 1 . SH NAME ls \\ fB list \\ fR directory contents"
BARS = "| option | default | meaning | unit |"
RULE = "= = = = = = = = = = = = name value = = = = = = = = = = = = first 1 second 2 = = = = = = = = = = = ="
HEADING = "configuration = = = = = = = = = = = = = the options below set the driver up"


@pytest.mark.parametrize("text, kinds", [
    (PROSE, set()), (CODE, {"code"}), (HTML, {"markup"}), (ROFF, {"markup"}), (BARS, {"table"}),
    (RULE, {"table"}), (HEADING, set()), ("a ( b ) c = d", set()), ("内 核 的 补 丁 from : 作 者", {"non_latin"}),
    ("the café in zürich", set()),
])
def test_detectors(text, kinds):
    detectors = (("code", is_code), ("markup", is_markup), ("table", is_table), ("non_latin", is_non_latin))
    assert {k for k, f in detectors if f(text)} == kinds


def test_block_measures_against_direct_counts():
    ids = np.array([2, 10, 11, 10, 3, 12, 12, 12, 3])
    special = np.array([1, 0, 0, 0, 1, 0, 0, 0, 1])
    profile = block_profile(ids, special, CODE)
    p = np.array(list(Counter([10, 11, 10, 12, 12, 12]).values()), dtype=np.float64) / 6
    assert profile["length"] == 6 and profile["documents"] == 2
    assert profile["unique_share"] == pytest.approx(3 / 6) and profile["unigram_entropy"] == pytest.approx(-(p * np.log(p)).sum())
    assert [profile[f"{k}_share"] for k in ("code", "markup", "table", "non_latin")] == [1.0, 0.0, 0.0, 0.0]


def test_kept_and_dropped_means_and_examples():
    texts = [PROSE, CODE, HTML, BARS, PROSE, CODE]
    rng = np.random.default_rng(0)
    profiles = []
    for text in texts:
        ids = np.concatenate([[2], rng.integers(5, 50, size=int(rng.integers(5, 20))), [3]])
        special = np.zeros_like(ids)
        special[[0, -1]] = 1
        profiles.append(block_profile(ids, special, text))
    kept = np.array([False, True, True, False, False, True])
    result = compare(profiles, kept, texts, examples=2, width=20)
    assert result.counts == {"kept": 3, "dropped": 3}
    for m in MEASURES:
        assert result.kept[m] == pytest.approx(np.mean([profiles[i][m] for i in (1, 2, 5)]))
        assert result.dropped[m] == pytest.approx(np.mean([profiles[i][m] for i in (0, 3, 4)]))
    assert result.kept["code_share"] == pytest.approx(2 / 3) and result.dropped["table_share"] == pytest.approx(1 / 3)
    assert result.examples == {"kept": [CODE[:20], HTML[:20]], "dropped": [PROSE[:20], BARS[:20]]}
    text = report(result, "crafted")
    assert "| code_share | 0.6667 | 0 | +0.667 |" in text and f"* `{CODE[:20]}`" in text
    with pytest.raises(ValueError, match="kept and dropped blocks are both needed"):
        compare(profiles, np.ones(6, dtype=bool), texts)


def test_agreement_of_two_selections():
    blocks = np.array([4, 9, 1, 7, 3, 8])
    a = np.array([True, True, False, False, True, False])
    b = np.array([True, False, True, False, True, False])
    assert kept_agreement(blocks, a, blocks, b) == pytest.approx(2 / 3)
    assert kept_agreement(blocks, a, blocks, a) == 1.0
    with pytest.raises(ValueError, match="different blocks"):
        kept_agreement(blocks, a, blocks[::-1], b)
