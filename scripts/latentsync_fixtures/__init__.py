"""Fixtures from LatentSync's own code (bytedance/LatentSync at the pinned commit) for synclip's equivalence tests."""
