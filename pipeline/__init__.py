"""Everything around one image, as the jobs fan it out (DESIGN.md: jobs -> pipeline -> singan).

manifest     the Parquet manifest: its columns, read and check every row
catalog      making a manifest: the images of a folder, bucket prefix or glob, written as Parquet
storage      one image's folder at any fsspec URL: whole-or-absent writes, retries, model files
tracking     MLflow runs that never fail a training; metrics.jsonl replay without duplicates
train_image  the per-image training task: resume, skip, failure isolation, per-scale metrics
apps         the sr and animate tasks of a row: their training config and their outputs
results      the job's results table
inception    the Inception weights for SIFID, resolved once per job
evaluate     the per-model SIFID / diversity / patch-metric evaluation task
report       the evaluation's table, summary, histogram and HTML report

No Ray here: each function runs in one process, and the jobs declare the Ray tasks.
"""
