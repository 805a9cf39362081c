"""The default node config and the example task and timer definitions (TOML)."""
