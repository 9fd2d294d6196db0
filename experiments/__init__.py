"""Scripts that run a config sweep and regenerate one finding's figures (see experiments/README.md)."""
