"""Training configs (ml_collections): python -m experiments.train --config=configs/<name>.py"""
