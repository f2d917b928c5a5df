"""Keeps a text run's tokeniser beside its exported models (``RUN_DIR/tokenizer.json``), so that
the models can be used on new text after the run (on by default; nothing to do without text).

It also compares, by content, the tokenizer that a Hugging Face model directory carries (a
student's or a teacher's ``hf_dir``) with the data's: token-level distillation and training
compare token ids, so a model whose directory holds another tokenizer (even one of the same size)
is an error naming its key, before anything trains."""

from __future__ import annotations

from kdlab import KdlabError, hookimpl


class TokenizerFile:
    default_enabled = True
    data_kinds = {"text"}

    @hookimpl
    def kdlab_stage_start(self, stage):
        data = stage.data.extra.get("text")
        if data is None:
            return
        models = [(f"stages.{stage.name}.model.hf_dir", stage.student)]
        models += [(f"stages.{stage.name}.teachers[{i}] = '{ref}'", t) for i, (ref, t)
                   in enumerate(zip(stage.config.teachers, stage.teachers))]
        for key, model in models:
            path = getattr(model, "tokenizer_file", None)
            if path is None:
                continue
            from kdlab.data.text import load_tokenizer, tokenizer_difference

            why = tokenizer_difference(load_tokenizer(str(path)), data.tokenizer)
            if why is not None:
                raise KdlabError(f"{key}: its tokenizer ({path}) is not the data's (data.tokenizer = "
                                 f"'{stage.recipe.data.config.tokenizer}'): {why}; its token ids mean other text, "
                                 f"so set data.tokenizer = '{path.parent}' or use a model trained with the data's")
        if stage.is_main:
            (stage.run_dir / "tokenizer.json").write_text(data.tokenizer.to_str(), encoding="utf-8")
