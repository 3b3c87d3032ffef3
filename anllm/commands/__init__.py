"""CLI subcommands, one module each (see anllm/cli.py)."""
