"""The protein Steer tab's "Find latents that move the classifier" (explorer/tabs/outcome.py) against the fake
backend: the table, the summary, adding a row to the edits table, the errors, and where the button shows."""

from __future__ import annotations

import gradio as gr
import pandas as pd
import pytest

from backend.errors import BackendError
from explorer.tabs import outcome, steer
from tests.fake_backend import FakeBackend

SEQ = "MKVLAAGIVGKLLAQAK"
OUTCOME_CAPS = {
    **FakeBackend.capabilities,
    "generates_text": False,
    "outcome_params": {"k": False, "motif": False},
    "outcome_help": "",
    "outcome_genre_mix": False,
}


class ProteinFake(FakeBackend):
    """The fake as a protein classifier workspace (its classifier_movers answers instead of refusing)."""

    modality = "protein"
    capabilities = {**OUTCOME_CAPS, "classifier_movers": True}

    def example_input(self, n: int = 20) -> str:
        return SEQ


class RecsysFake(FakeBackend):
    modality = "recsys"
    capabilities = {**OUTCOME_CAPS, "outcome_params": {"k": True, "motif": False}, "classifier_movers": False}

    def example_input(self, n: int = 20) -> str:
        return "1 2 3"


def select(row: list) -> gr.SelectData:
    return gr.SelectData(None, {"index": [0, 0], "value": row[0] if row else None, "row_value": row})


def test_found_movers_fill_the_table_and_say_what_was_measured():
    fb = ProteinFake()
    table, summary, found_for = outcome.find_movers(fb, "relu", SEQ)
    r = fb.classifier_movers("relu", SEQ)
    assert list(table.columns) == outcome.MOVER_COLUMNS and len(table) == 8 and found_for == "relu"
    assert table["latent"].tolist() == [x["latent"] for x in r["rows"]]
    assert table["explanation"].iloc[0] == fb.feature("relu", 0).label
    assert table["measured change"].iloc[1] == round(r["rows"][1]["measured"], 3)
    assert "Predicted: hemolytic (p = 0.600)" in summary and "+0.300 (latent 0)" in summary
    assert "sign for 8 of 8" in summary and "Select a row" in summary


def test_a_result_with_no_visible_change_says_why():
    r = ProteinFake().classifier_movers("topk", SEQ, 2)
    for x in r["rows"]:
        x["measured"] = x["measured"] / 100
    r["largest"] = max(abs(x["measured"]) for x in r["rows"])
    text = outcome.movers_summary(r)
    assert "No candidate moves p by 0.05 or more" in text and "reads only &lt;cls&gt;" in text
    assert "Select a row" not in text
    assert "No latent could be ranked" in outcome.movers_summary({**r, "rows": []})


def test_bad_input_is_a_warning_and_a_message():
    fb = ProteinFake()
    for sae, seq, msg in [("topk", "", "the sequence is empty"), ("nope", SEQ, "unknown SAE"), ("topk", "MK1", "'1'")]:
        with pytest.warns(UserWarning, match=msg.replace("'", ".")):
            table, summary, found_for = outcome.find_movers(fb, sae, seq)
        assert table.empty and list(table.columns) == outcome.MOVER_COLUMNS
        assert "msg error" in summary and found_for is None
    with pytest.warns(UserWarning, match="this is a text workspace: it has no classifier to move"):
        outcome.find_movers(FakeBackend(), "topk", SEQ)


def test_a_selected_row_joins_the_edits_table_at_its_clamp_value():
    fb = ProteinFake()
    table, _, found_for = outcome.find_movers(fb, "relu", SEQ)
    edits = pd.DataFrame([[7, "zero", 0.0, 1.5]], columns=steer.TABLE_COLUMNS)
    row = table.iloc[2].tolist()
    new, sae = outcome.add_mover(fb, edits, found_for, select(row))
    assert sae == "relu" and new["latent"].tolist() == [7, row[0]]
    added = new.iloc[1]
    assert added["mode"] == "clamp" and added["value"] == row[2]
    assert added[steer.MAX_ACT] == round(fb.feature("relu", row[0]).max_act, 2)
    with pytest.raises(gr.Error, match="no latent"):
        outcome.add_mover(fb, edits, found_for, select([]))


def test_the_endpoint_answers_rows_or_one_error_line():
    fb = ProteinFake()
    r = outcome.classifier_movers_api(fb, "topk", SEQ, 3)
    assert len(r["rows"]) == 3 and r["largest"] == 0.3
    assert outcome.classifier_movers_api(fb, "topk", SEQ, 11) == {"error": "limit must be between 1 and 10, got 11"}
    err = outcome.classifier_movers_api(RecsysFake(), "topk", "1 2 3")["error"]
    assert err.startswith("this is a recsys workspace: it has no classifier to move")


@pytest.mark.parametrize("fake, shown", [(ProteinFake, True), (RecsysFake, False)])
def test_the_button_shows_only_where_there_is_a_classifier(fake, shown):
    with gr.Blocks() as demo:
        outcome.build(fake(), ["topk"])
    buttons = [b for b in demo.blocks.values() if isinstance(b, gr.Button) and "move the classifier" in str(b.value)]
    assert len(buttons) == int(shown)
    tables = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "movers"]
    assert len(tables) == int(shown)


def test_the_fake_refuses_like_the_real_backend():
    with pytest.raises(BackendError, match="this is a text workspace: it has no classifier to move"):
        FakeBackend().classifier_movers("topk", SEQ)
