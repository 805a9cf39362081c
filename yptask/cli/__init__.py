"""The `yptask` command line: one module per command family."""
