"""Scripts that run a config sweep and regenerate one finding's figures (see README.md)."""
