"""What a language model returns instead of logits when its loss is computed in chunks."""

from __future__ import annotations

from typing import NamedTuple

import torch


class HiddenStates(NamedTuple):
    """A language model's final hidden states (batch, length, hidden) and its LM head's weight
    (vocabulary, hidden): the logits are ``hidden @ weight.T``, and a vocabulary loss can take
    them a chunk of tokens at a time (:mod:`kdlab.methods.vocab_chunks`; :class:`kdlab.ModelOutput` carries them) instead of holding
    (tokens x vocabulary) of them. A model returns this from ``model(tokens, head=False)`` when
    its class sets ``splits_head = True``. (A tuple, so that DistributedDataParallel finds the
    tensors in a forward's output.)"""

    hidden: torch.Tensor
    weight: torch.Tensor

    def logits(self) -> torch.Tensor:
        return self.hidden @ self.weight.t()
