"""Everything around one image (manifest, storage through fsspec, MLflow tracking, the per-image
train and evaluate functions that the jobs fan out). Depends on `singan`, never the reverse.
Built with the batch-pipeline work."""
