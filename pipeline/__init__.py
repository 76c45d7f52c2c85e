"""Everything around one image, as the jobs fan it out (jobs -> pipeline -> singan,
docs/architecture.md).

manifest     the Parquet manifest: its columns, streamed and checked a record batch at a time
catalog      making a manifest: the images of a folder, bucket prefix or glob, written as Parquet
tasks        what a row does with its model (train, sr, animate): columns, config, outputs
buckets      the rows that train together in one Ray task, made as the rows stream by
train_image  a Ray task's bucket of rows: resume, skip, failure isolation, the ledger files
recording    what a training leaves as it goes: each scale's files, points and MLflow requests
storage      the only module that talks to storage: whole-or-absent writes, limits, retries
tracking     MLflow at a bounded rate, never failing a training; the replay without duplicates
ledger       one file per finished image, and its compaction into the results table
inception    the Inception weights for SIFID, resolved once per job
evaluate     the per-model SIFID / diversity / patch-metric evaluation task
report       the evaluation's tables, summary, histogram and HTML report, built as results stream

No Ray here: each function runs in one process, and the jobs declare the Ray tasks.
"""
