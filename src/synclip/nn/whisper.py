"""The Whisper audio encoder as the UNet's audio tower: every state before the final layer norm.
Shapes: log-mel windows (B, n_mels, 3000) → states (B, 1500, L, D), L = encoder layers + 1, D = d_model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from synclip.constants import WHISPER_CHUNK_SECONDS, WHISPER_CHUNK_TOKENS

if TYPE_CHECKING:
    from transformers import WhisperConfig


class WhisperAudioEncoder(nn.Module):
    """Whisper's encoder, returning the stem output and every block's output, all before the final layer norm.

    transformers' `output_hidden_states` gives L = layers + 1 states: `hidden_states[0]` is the stem
    (conv1, GELU, conv2, GELU) plus the positional embedding, `hidden_states[i]` the output of block i
    (counting from 1), except the last, which transformers replaces by `last_hidden_state`, i.e. AFTER the final
    `layer_norm` (whisper's `ln_post`). LatentSync keeps the last block's output before `ln_post`, so
    that one state is taken by a forward hook on the last block instead.
    """

    def __init__(self, config: WhisperConfig):
        super().__init__()
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        if config.max_source_positions != WHISPER_CHUNK_TOKENS:
            raise ValueError(
                f"max_source_positions is {config.max_source_positions}; the {WHISPER_CHUNK_SECONDS} s "
                f"Whisper window has {WHISPER_CHUNK_TOKENS} tokens"
            )
        self.encoder = WhisperEncoder(config)

    @property
    def num_states(self) -> int:
        """L: the stem plus one state per encoder block."""
        return len(self.encoder.layers) + 1

    @property
    def width(self) -> int:
        """D: the encoder width (d_model)."""
        return self.encoder.embed_positions.embedding_dim

    @property
    def num_mel_bins(self) -> int:
        return self.encoder.conv1.in_channels

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, 3000) log-mel windows → (B, 1500, L, D) states, all before the final layer norm."""
        last_block: list[torch.Tensor] = []
        hook = self.encoder.layers[-1].register_forward_hook(lambda _m, _i, out: last_block.append(out))
        try:
            hidden = self.encoder(mel, output_hidden_states=True).hidden_states
        finally:
            hook.remove()
        assert len(hidden) == self.num_states, (len(hidden), self.num_states)
        assert len(last_block) == 1, len(last_block)
        assert isinstance(last_block[0], torch.Tensor), type(last_block[0])
        return torch.stack([*hidden[:-1], last_block[0]], dim=2)  # (B, 1500, L, D)
