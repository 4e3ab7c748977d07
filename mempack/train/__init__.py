"""Training on Ray Train + DeepSpeed: config, data, DeepSpeed config, worker loop, MLflow, export."""
