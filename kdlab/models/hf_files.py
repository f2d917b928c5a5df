"""Loading a local Hugging Face model directory (``hf_dir`` of a model): a damaged, truncated or
unsafe weights file is one error naming the directory and the file, never a traceback."""

from __future__ import annotations

import pickle
from pathlib import Path

from kdlab.engine.errors import KdlabError

WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def from_pretrained(cls, path: str | Path, key: str, **kwargs):
    """``cls.from_pretrained`` of the local directory ``path`` (no download). transformers reads
    ``.bin`` weights with ``torch.load(weights_only=True)``: a pickle that would run code is
    refused, here as one line. ``key`` names the recipe key in the message."""
    path = Path(path)
    try:
        return cls.from_pretrained(str(path), local_files_only=True, **kwargs)
    except Exception as exc:
        if not _a_bad_file(exc):
            raise
        weights = sorted(p.name for p in path.iterdir() if p.suffix in WEIGHTS) if path.is_dir() else []
        what = f"{path / weights[0]}" if len(weights) == 1 else f"{path}"
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, pickle.UnpicklingError):
            why = "a pickle that is not plain tensors (it could run code), refused"
        raise KdlabError(f"{key}: cannot load {what}: {why[:200]}") from exc


def _a_bad_file(exc: Exception) -> bool:
    # safetensors raises its own SafetensorError (an Exception subclass from Rust) for a damaged
    # file; transformers raises OSError / ValueError for a missing or malformed one
    return (isinstance(exc, (OSError, ValueError, EOFError, UnicodeDecodeError, pickle.UnpicklingError))
            or type(exc).__name__ == "SafetensorError")


def save_transformers(model, tokenizer_json: str, out: str | Path, *, pad: str, end: str,
                      adapter: bool = False) -> Path:
    """Write a ``transformer_lm`` (:class:`kdlab.models.transformer_lm.TransformerLM`) as a
    Hugging Face directory that ``AutoModelForCausalLM.from_pretrained`` and
    ``AutoTokenizer.from_pretrained`` read: its weights (safetensors), configuration, tokenizer
    (``tokenizer_json``, the run's, with kdlab's special tokens) and a generation configuration
    that stops at ``end`` and never emits ``pad``, as kdlab's own generation loop
    (:mod:`kdlab.models.generation`), so greedy decoding gives the same tokens in both. A LoRA
    student is merged into its weights first, or with ``adapter`` saved as its adapter alone
    (peft's ``adapter_config.json`` and weights, read with ``PeftModel.from_pretrained(base, dir)``)."""
    import tokenizers
    import transformers

    out = Path(out)
    tok = tokenizers.Tokenizer.from_str(tokenizer_json)
    if tok.get_vocab_size(with_added_tokens=True) != model.vocab:
        raise KdlabError(f"the tokenizer has {tok.get_vocab_size(with_added_tokens=True)} tokens, the model "
                         f"{model.vocab}: not the model's tokenizer")
    pad_id, end_id = tok.token_to_id(pad), tok.token_to_id(end)
    if pad_id is None or end_id is None:
        raise KdlabError(f"the tokenizer has no {pad if pad_id is None else end} token: not a kdlab text run's tokenizer")
    from kdlab.models.transformer_lm import merged

    peft_model = getattr(model, "_peft", (None,))[0]
    if adapter:
        if peft_model is None:
            raise KdlabError("--adapter: the model has no LoRA adapters (model lora); export it whole")
        out.mkdir(parents=True, exist_ok=True)
        peft_model.save_pretrained(str(out))
        transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, eos_token=end).save_pretrained(str(out))
        return out
    hf = merged(model).hf
    if hf.get_input_embeddings().num_embeddings > model.vocab:
        # kdlab cuts a padded vocabulary's logits to the tokenizer's; so does the exported model
        hf.resize_token_embeddings(model.vocab)
    hf.generation_config = transformers.GenerationConfig(eos_token_id=end_id, pad_token_id=pad_id,
                                                         suppress_tokens=[pad_id], do_sample=False)
    hf.config.pad_token_id, hf.config.eos_token_id = pad_id, end_id
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out), safe_serialization=True)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, eos_token=end)
    fast.save_pretrained(str(out))
    return out
