"""The batch jobs: Ray drivers and their commands (singan-fleet-train, -evaluate, -manifest,
-sync, -compact once installed; `python jobs/NAME.py` from a checkout)."""
