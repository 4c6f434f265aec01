"""SHIFT-style spurious-feature removal: the table, the bad-input errors, and the mechanics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from backend.research.shift import ShiftError, check_table, run_shift, speeches_shift_table


def test_demo_table_has_a_spurious_correlation_in_train_only():
    df = speeches_shift_table()
    tr, te = df[df.split == "train"], df[df.split == "test"]
    agree = lambda d: ((d.label == "democrat") == (d.group == "debate")).mean()  # noqa: E731
    assert agree(tr) > 0.85  # register predicts party in train
    assert abs(agree(te) - 0.5) < 1e-9  # and not at all in test: equal cells
    assert te.groupby(["label", "group"]).size().nunique() == 1
    assert not set(tr.text) & set(te.text)


def test_bad_tables():
    with pytest.raises(ShiftError, match=r"lacks column\(s\) \['group'\]"):
        check_table(pd.DataFrame({"text": ["a"], "label": [1]}))
    with pytest.raises(ShiftError, match="single value"):
        check_table(pd.DataFrame({"text": ["a", "b"], "label": [0, 1], "group": ["g", "g"]}))
    with pytest.raises(ShiftError, match="exactly 2 classes"):
        check_table(pd.DataFrame({"text": ["a", "b", "c"], "label": [0, 1, 2], "group": ["g", "h", "g"]}))


def test_ablating_the_group_latent_fixes_the_worst_group():
    """Latent 0 carries the label weakly, latent 1 the group strongly; in train they agree 90%."""
    rng = np.random.default_rng(0)
    rows = []
    for split, n, agree in (("train", 800, 0.95), ("test", 800, 0.5)):
        y = rng.integers(0, 2, n)
        g = np.where(rng.random(n) < agree, y, 1 - y)
        rows.append(pd.DataFrame({"text": "t", "label": y, "group": g, "split": split}))
    df = pd.concat(rows, ignore_index=True)
    y, g = df.label.to_numpy(), df.group.to_numpy()
    feats = np.abs(rng.normal(0, 0.3, (len(df), 6)))
    feats[:, 0] += y * 1.0 + rng.normal(0, 0.6, len(df)).clip(-0.9, None)
    feats[:, 1] += g * 3.0
    r = run_shift("synthetic", np.clip(feats, 0, None), check_table(df), top=4)
    assert 1 in r.ablated and 0 not in r.ablated
    assert r.before["worst_group"] < 0.5
    assert r.after_retrain["worst_group"] > r.before["worst_group"] + 0.2
