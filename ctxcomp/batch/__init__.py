"""`ctxcomp batch`: compress a whole corpus, locally or on Ray, resumably."""

from __future__ import annotations

from ctxcomp.batch.job import OUTPUT_SCHEMA, CompressBatch, JobConfig
from ctxcomp.batch.runner import run

__all__ = ["OUTPUT_SCHEMA", "CompressBatch", "JobConfig", "run"]
