"""Inference: the sampler on tensors (`pipeline`), the file adapter (`lipsync`), packaged models."""
