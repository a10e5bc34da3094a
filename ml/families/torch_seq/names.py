"""The `family` tags of the sequence family's registered models, in a module that imports
nothing, so that the family can be named without importing MLflow (a GPU machine running
bench/seq_study.py has torch but no MLflow)."""

REGISTRY_TAG = "torch-seq"
ENCODER_REGISTRY_TAG = "torch-seq-encoder"
