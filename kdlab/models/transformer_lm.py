"""A decoder-only transformer language model through Hugging Face ``transformers`` (the ``hf``
extra), so that models built from settings, real checkpoints and users' models share one path.

Built from settings: a Llama configuration (RMSNorm, rotary positions, SwiGLU, separate q/k/v
projections) of ``layers``, ``width``, ``heads``, ``ffn`` and the data's sequence length,
randomly initialised; ``family = "gpt2"`` builds a GPT-2 configuration instead. With ``hf_dir``
the model and its weights come from a local Hugging Face directory (``config.json`` and
safetensors or ``pytorch_model.bin``, read with ``local_files_only``: nothing is downloaded);
the size settings are then ignored. A model whose vocabulary is smaller than the data's (a
tokeniser with kdlab's special tokens added) gets its embeddings resized; a larger (padded) one
has its logits cut to the data's vocabulary.

Input: token ids (batch, length), right-padded (causal attention: padding after a token never
reaches it). Output: logits (batch, length, vocab). Tap points are the Hugging Face module names,
e.g. ``hf.model.layers.1`` (a block; Llama), ``hf.model.layers.1.self_attn.q_proj`` / ``k_proj``
/ ``v_proj`` (for MiniLM relations), ``hf.transformer.h.1`` (GPT-2).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Literal

import attrs
import torch
from attrs import field
from attrs import validators as v
from torch import nn

from kdlab.engine.errors import KdlabError
from kdlab.engine.heads import HiddenStates
from kdlab.models.hf_files import from_pretrained

# the families whose logits are the LM head applied to the base model's last hidden state
HEAD_ONLY_FAMILIES = frozenset({"llama", "gpt2", "qwen2", "qwen3", "mistral"})


@attrs.frozen(kw_only=True)
class LoraSettings:
    """LoRA adapters (Hu et al. 2022) through peft (the ``lora`` extra): the base model frozen,
    only the adapters train."""

    r: int = field(default=8, validator=v.ge(1))
    alpha: float = field(default=16.0, validator=v.gt(0))
    dropout: float = field(default=0.0, validator=[v.ge(0), v.lt(1)])
    # module names to adapt (e.g. ["q_proj", "v_proj"]); None: peft's default for the model family
    target_modules: tuple[str, ...] | None = field(default=None, converter=lambda x: None if x is None else tuple(x))


@attrs.frozen(kw_only=True)
class TransformerLMConfig:
    family: Literal["llama", "gpt2"] = "llama"
    layers: int = field(default=4, validator=v.ge(1))
    width: int = field(default=128, validator=v.ge(8))
    heads: int = field(default=4, validator=v.ge(1))
    ffn: int | None = field(default=None, validator=v.optional(v.ge(1)))  # None: 4 x width (gpt2), 8/3 x width (llama)
    dropout: float = field(default=0.0, validator=[v.ge(0), v.lt(1)])
    hf_dir: str | None = None  # a local Hugging Face causal-LM directory: weights and architecture from there
    lora: LoraSettings | None = None  # train LoRA adapters on the frozen model instead of the whole model

    def __attrs_post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")


def _transformers():
    try:
        import transformers
    except ImportError as exc:
        raise KdlabError("model arch 'transformer_lm' needs Hugging Face transformers: pip install 'kdlab[hf]'") from exc
    return transformers


def hf_config(cfg: TransformerLMConfig, vocab: int, context: int):
    tf = _transformers()
    if cfg.family == "gpt2":
        return tf.GPT2Config(vocab_size=vocab, n_positions=context, n_embd=cfg.width, n_layer=cfg.layers,
                             n_head=cfg.heads, n_inner=cfg.ffn, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                             attn_pdrop=cfg.dropout, bos_token_id=None, eos_token_id=None)
    ffn = cfg.ffn or (8 * cfg.width // 3 + 7) // 8 * 8
    return tf.LlamaConfig(vocab_size=vocab, hidden_size=cfg.width, intermediate_size=ffn,
                          num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                          num_key_value_heads=cfg.heads, max_position_embeddings=context,
                          attention_dropout=cfg.dropout, tie_word_embeddings=True,
                          bos_token_id=None, eos_token_id=None, pad_token_id=None)


class TransformerLM(nn.Module):
    """A Hugging Face causal LM as a plain ``tokens -> logits`` module."""

    def __init__(self, hf: nn.Module, vocab: int, context: int):
        super().__init__()
        self.hf, self.vocab, self.context = hf, vocab, context
        # forward(tokens, head=False) gives the final hidden states and the head's weight, for
        # losses in chunks: only where the logits are exactly lm_head(hidden) (no bias, scale or
        # soft-capping after it, as in the families below; others always give logits)
        head = hf.get_output_embeddings()
        self.splits_head = (getattr(hf.config, "model_type", None) in HEAD_ONLY_FAMILIES
                            and isinstance(head, nn.Linear) and head.bias is None)

    def forward(self, tokens: torch.Tensor, head: bool = True):
        if not head and self.splits_head:
            hidden = self.hf.base_model(input_ids=tokens, use_cache=False).last_hidden_state
            return HiddenStates(hidden, self.hf.get_output_embeddings().weight[: self.vocab])
        logits = self.hf(input_ids=tokens, use_cache=False).logits
        return logits[..., : self.vocab] if logits.shape[-1] > self.vocab else logits

    def new_cache(self):
        """An empty key-value cache for :meth:`forward_cached` (kdlab.models.generation)."""
        return _transformers().DynamicCache()

    def forward_cached(self, tokens: torch.Tensor, cache) -> torch.Tensor:
        """Logits of ``tokens`` (batch, new) that follow what ``cache`` holds, which then holds them too."""
        # transformers 5.x names it `cache` (`past_key_values` is deprecated there), 4.x `past_key_values`
        name = "cache" if "cache" in inspect.signature(self.hf.forward).parameters else "past_key_values"
        logits = self.hf(input_ids=tokens, use_cache=True, **{name: cache}).logits
        return logits[..., : self.vocab] if logits.shape[-1] > self.vocab else logits

    def example_input(self) -> torch.Tensor:
        """One sequence of the data's length (what ``macs`` counts; per token: divide by it)."""
        return torch.zeros(1, self.context, dtype=torch.long)


def build(config: TransformerLMConfig, data) -> TransformerLM:
    tf = _transformers()
    vocab, context = data.num_classes, data.input_shape[0]
    if config.hf_dir is None:
        hf = tf.AutoModelForCausalLM.from_config(hf_config(config, vocab, context), attn_implementation="sdpa")
    else:
        hf = from_pretrained(tf.AutoModelForCausalLM, config.hf_dir, f"model hf_dir = '{config.hf_dir}'",
                             attn_implementation="sdpa")
        positions = getattr(hf.config, "max_position_embeddings", None) or getattr(hf.config, "n_positions", None)
        if positions is not None and positions < context:
            raise KdlabError(f"model hf_dir = '{config.hf_dir}': {positions} positions, fewer than data.seq_len = {context}")
        if hf.get_input_embeddings().num_embeddings < vocab:
            hf.resize_token_embeddings(vocab)
    peft_model = None
    if config.lora is not None:
        peft_model = _with_lora(hf, config.lora)
    model = TransformerLM(hf, vocab, context)
    model._peft = (peft_model,)  # a tuple: not a submodule (the adapters live inside hf itself)
    # the tokenizer the directory carries (compared with the data's by content when it trains or teaches)
    tokenizer = Path(config.hf_dir) / "tokenizer.json" if config.hf_dir is not None else None
    model.tokenizer_file = tokenizer if tokenizer is not None and tokenizer.is_file() else None
    return model


def _with_lora(hf, lora: LoraSettings):
    """Inject LoRA adapters into ``hf`` in place (peft); its other parameters are frozen."""
    try:
        import peft
    except ImportError as exc:
        raise KdlabError("model lora needs peft: pip install 'kdlab[lora]'") from exc
    try:
        return peft.get_peft_model(hf, peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                       target_modules=None if lora.target_modules is None
                                                       else list(lora.target_modules)))
    except ValueError as exc:  # a target module the model does not have, or no default for its family
        raise KdlabError(f"model lora: {str(exc).splitlines()[0][:300]}") from None


def merged(model: TransformerLM) -> TransformerLM:
    """``model`` with its LoRA adapters merged into the weights (peft's ``merge_and_unload``): a
    plain transformers model again. Modifies ``model``; one without adapters is returned as it is."""
    peft_model = getattr(model, "_peft", (None,))[0]
    if peft_model is not None:
        model.hf = peft_model.merge_and_unload()
        model._peft = (None,)
    return model


ARCH = (TransformerLMConfig, build)  # the `kdlab.models` entry point: config class, builder
