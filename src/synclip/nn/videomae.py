"""TREPA's video network: a transformers VideoMAE, at the geometry params.yaml's `videomae` section gives.
Shapes: clips (B, F, 3, S, S) normalised pixels → tokens (B, F/t · (S/p)², E), t tubelet frames, p patch size.
"""

from __future__ import annotations

from transformers import VideoMAEConfig

from synclip.config import VideoMAEParams


def videomae_config(params: VideoMAEParams) -> VideoMAEConfig:
    return VideoMAEConfig(
        image_size=params.image_size,
        patch_size=params.patch_size,
        num_frames=params.num_frames,
        tubelet_size=params.tubelet_size,
        hidden_size=params.hidden_size,
        num_hidden_layers=params.num_layers,
        num_attention_heads=params.num_heads,
        intermediate_size=params.intermediate_size,
        decoder_hidden_size=params.decoder_hidden_size,
        decoder_num_hidden_layers=params.decoder_num_layers,
        decoder_num_attention_heads=params.decoder_num_heads,
        decoder_intermediate_size=params.decoder_intermediate_size,
        layer_norm_eps=1e-6,  # VideoMAE's (timm) LayerNorms
        use_mean_pooling=False,  # the pretraining encoder ends in a LayerNorm over tokens, as VideoMAE's
        norm_pix_loss=True,  # targets: each patch normalised by its own mean / std (VideoMAE)
    )
