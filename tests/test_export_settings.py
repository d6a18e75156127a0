"""lorashear.export_settings: the one spelling of an export request refuses what cannot be done, per field."""
from __future__ import annotations

import pytest

from lorashear.export_settings import ExportSettings
from lorashear.settings import SettingsError


def test_measure_needs_a_gguf_file():
    """llama.cpp runs GGUF files: measuring a Hugging Face folder is refused by the schema, in one line."""
    with pytest.raises(SettingsError) as info:
        ExportSettings(format="hf", measure=True)
    assert set(info.value.errors) == {"measure"}
    assert info.value.errors["measure"] == "llama.cpp runs GGUF files: measuring needs format gguf"
    assert ExportSettings(format="gguf", measure=True).measure


def test_cli_refuses_measure_with_hf_before_any_work(tmp_path, capsys):
    from lorashear.cli import main

    assert main(["export", "demo", "--out", str(tmp_path / "m"), "--measure"]) == 2
    assert capsys.readouterr().err.strip() == ("lorashear export: error: --measure: llama.cpp runs GGUF files: "
                                               "measuring needs format gguf")
    assert not (tmp_path / "m").exists()
