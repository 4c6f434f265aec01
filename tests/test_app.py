"""app.py: which workspaces it serves, and how one that cannot be built is reported without stopping the others."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
import app  # noqa: E402

BAD = "name: test_app_bad\ncorpora: [{name: no_such_corpus}]\n"


@pytest.fixture()
def bad(tmp_path):
    """A config whose build fails at its first step (an unknown corpus); its workspace folder is removed after."""
    p = tmp_path / "bad.yaml"
    p.write_text(BAD)
    yield p
    shutil.rmtree(REPO / "workspaces" / "test_app_bad", ignore_errors=True)


def test_a_config_that_cannot_be_built_is_skipped_with_one_line(tiny_ws, bad, capsys):
    args = app.parse_args(["--config", str(REPO / "configs" / "tiny.yaml"), "--config", str(bad)])
    builder = app.start_builder(args)  # builds in the background; the built tiny workspace is served at once
    dirs = app.workspace_dirs(args, builder)
    assert dirs == [REPO / "workspaces" / "tiny"]
    assert builder.join(timeout=300)
    err = capsys.readouterr().err
    assert "skipping" in err and "no_such_corpus" in err


def test_a_single_bad_config_is_an_error(bad):
    with pytest.raises(ValueError, match="no_such_corpus"):
        app.workspace_dirs(app.parse_args(["--config", str(bad)]))
    assert app.main(["--config", str(bad)]) == 2


def test_mount_paths_put_the_first_workspace_at_the_root():
    from backend.modalities import get_modality

    class B:
        def __init__(self, name, modality):
            self.workspace_name, self.modality = name, modality
            self.capabilities = get_modality(modality).capabilities()

    assert app.mount_paths([B("demo", "text"), B("protein", "protein"), B("recsys", "recsys")]) == [
        ("demo", "text", "/"),
        ("protein", "protein LM", "/protein/"),
        ("recsys", "recommender", "/recsys/"),
    ]
