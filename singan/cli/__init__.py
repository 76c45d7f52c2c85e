"""The `singan` command: its main subcommands (commands.py: train, sample, demo, examples), the
metrics' (metrics.py: sifid, quality), the applications' (apps.py), and what they share
(common.py)."""
