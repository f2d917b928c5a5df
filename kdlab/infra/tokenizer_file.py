"""Keeps a text run's tokeniser beside its exported models (``RUN_DIR/tokenizer.json``), so that
the models can be used on new text after the run (on by default; nothing to do without text)."""

from __future__ import annotations

from kdlab import hookimpl


class TokenizerFile:
    default_enabled = True
    data_kinds = {"text"}

    @hookimpl
    def kdlab_stage_start(self, stage):
        data = stage.data.extra.get("text")
        if data is not None and stage.is_main:
            (stage.run_dir / "tokenizer.json").write_text(data.tokenizer.to_str(), encoding="utf-8")
