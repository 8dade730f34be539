"""Configuration: the frozen model, TOML loading and typed value checks (no Twisted)."""
