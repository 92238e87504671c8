"""Scripts that train or calibrate the shipped model deltas, run from a checkout as
`python -m training.<name>` (the SQuAD split they share is `training.squad`).

Nothing here ships in the wheel or is imported by the service: loaders and weights live in
`ctxcomp/models/`.
"""
