"""score.py: the one scorer (detection + fuzzing) by hand: marks, answers parsed, metrics, the rule scorer."""

from __future__ import annotations

import pytest

from backend.index.label import Explanation
from backend.index.score import (
    Example,
    balanced_accuracy,
    detect_prompt,
    detection_items,
    detection_metrics,
    fuzz_items,
    fuzz_prompt,
    marked_text,
    parse_bits,
    rule_fuzz,
)


def test_marks_wrap_runs_of_tokens_after_their_leading_space():
    toks = [" The", " cat", " sat", " on", "\xa0", " mat"]
    assert marked_text(toks, [1, 2]) == "The <<cat sat>> on⍽ mat"
    assert marked_text(toks, [0, 4]) == "<<The>> cat sat on<<⍽>> mat"
    assert marked_text(["a<<b"], []) == "a< <b"  # a token cannot fake a mark


@pytest.mark.parametrize(
    "reply, n, bits",
    [
        ("[1, 0, 1]", 3, [1, 0, 1]),
        ("Sure! The answer is [0, 1]. Also [1, 1]", 2, [0, 1]),
        ("1 0", 3, [1, 0, 0]),  # missing answers count as 0
        ("I cannot tell.", 2, [0, 0]),
        ("[0.5, 1, 10]", 3, [1, 0, 0]),  # 0.5 and 10 are not answers
        ("[1, 1, 1, 1]", 2, [1, 1]),
    ],
)
def test_answers_are_parsed_or_count_as_no(reply, n, bits):
    assert parse_bits(reply, n) == bits


def test_detection_metrics_and_balanced_accuracy_by_hand():
    p, r, f1 = detection_metrics([1, 1, 0, 0, 1], [True, False, True, False, True])
    assert (p, r, f1) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert detection_metrics([0, 0], [True, False]) == (0.0, 0.0, 0.0)
    assert balanced_accuracy([1, 1, 0, 1], [True, True, False, False]) == pytest.approx((1.0 + 0.5) / 2)
    assert balanced_accuracy([1, 1], [True, True]) == 1.0


def _ex(acts, ids=None):
    return Example([f"t{i}" for i in range(len(acts))] if ids is None else [f"t{i}" for i in ids], acts, ids, 9)


def test_fuzz_items_alternate_correct_and_wrong_marks():
    pos = [_ex([0, 2.0, 0, 1.0, 0, 0]) for _ in range(6)]
    items = fuzz_items(pos, seed=0)
    assert [it.correct for it in items] == [True, False] * 3
    for it in items:
        fired = {1, 3}
        assert len(it.marked) == 2 and (set(it.marked) == fired) == it.correct
        assert it.correct or not set(it.marked) & fired  # wrong marks never touch a firing token
    assert fuzz_items(pos, seed=0) == items  # seeded
    assert fuzz_items([_ex([0, 0])], seed=0) == []  # a context with no firing token cannot be marked


def test_detection_items_mix_both_classes_in_a_seeded_order():
    pos, neg = [_ex([1.0]) for _ in range(5)], [_ex([0.0]) for _ in range(5)]
    items = detection_items(pos, neg, seed=3)
    assert sorted(ex.fires for ex in items) == [False] * 5 + [True] * 5
    assert [ex.fires for ex in items] != [True] * 5 + [False] * 5 and detection_items(pos, neg, seed=3) == items


def test_the_rule_scores_fuzzing_of_a_statistical_explanation():
    # the latent fires on token 2; the rule "t2" judges right marks right and wrong marks wrong
    pos = [_ex([0, 1.0, 0, 0, 1.0], ids=[0, 2, 5, 6, 2]) for _ in range(4)]
    items = fuzz_items(pos, seed=1)
    assert rule_fuzz(Explanation("'t2'", [2]), items, V=9) == 1.0
    assert rule_fuzz(Explanation("'t5'", [5, 6, 0]), items, V=9) == 0.0  # always judged wrong marks right
    assert rule_fuzz(Explanation("after 't0'", [], after=[0]), items, V=9) == 1.0  # half the right marks: right
    three = fuzz_items([_ex([0, 1.0, 0, 1.0, 1.0], ids=[0, 2, 5, 2, 2]) for _ in range(4)], seed=1)
    assert rule_fuzz(Explanation("after 't0'", [], after=[0]), three, V=9) == 0.5  # 1 of 3: judged wrong, chance
    assert rule_fuzz(Explanation("(never fires)", []), items, V=9) == 0.0


def test_prompts_show_the_explanation_and_every_example():
    ex = [_ex([0, 1.0, 0]), _ex([0, 0, 0])]
    msgs = detect_prompt("cats", ex)
    assert msgs[0]["role"] == "system" and "Python list" in msgs[0]["content"]
    assert [m["role"] for m in msgs[1:]] == ["user", "assistant", "user"]  # a worked example first
    user = msgs[-1]["content"]
    assert user.startswith("Explanation: cats") and "Example 1: t0t1t2" in user and "Example 2:" in user
    assert "<<" not in user  # detection shows no marks
    fuzz = fuzz_prompt("cats", fuzz_items([ex[0]], seed=0))[-1]["content"]
    assert "Example 1: t0<<t1>>t2" in fuzz and "list of 1 numbers" in fuzz
