"""Scripts that train or calibrate the shipped model deltas (run as `python -m ctxcomp.models.training.<name>`).

Nothing here is imported by the service: loaders and weights live one folder up.
"""
