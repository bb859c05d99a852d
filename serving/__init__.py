"""The BentoML service around synclip.serve."""
