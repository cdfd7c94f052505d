"""Trained model versions: who may have a copy, export, lineage and the model card."""
