"""The `singan` command: its subcommands (commands.py), the applications' (apps.py), and what
they share (common.py)."""
