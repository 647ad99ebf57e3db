"""Streaming cross-seed Pearson correlation for one cohort, with the random-rotation baseline
(method.md §2). Pure math: tensors in, tensors / dataclasses / polars frames out; no database,
no files.

- :mod:`.rotation`     the baseline's seeded per-layer rotations
- :mod:`.budget`       accumulator memory, device budget, reference-neuron blocks
- :mod:`.accumulator`  ``CohortCorrelation``: streaming moments, numerics, checkpoints
- :mod:`.gemm`         half-precision → float32 GEMMs on whatever this torch/device offers
- :mod:`.reduction`    moments → rho → per-neuron best partner, baseline, top-k
- :mod:`.result`       ``CorrelationResult``, merging blocks, frames for the tables
"""

from atlas.ingest.math.correlation.accumulator import PRECISIONS, STATE_VERSION, CohortCorrelation
from atlas.ingest.math.correlation.budget import (
    BlockPlan, accumulator_bytes, batch_workspace_bytes, default_budget_bytes, plan_ref_blocks,
)
from atlas.ingest.math.correlation.result import CorrelationResult, combine_blocks, result_frames
from atlas.ingest.math.correlation.rotation import ROTATION_KINDS, Shape, build_rotation, rotation_generator_seed

__all__ = [
    "PRECISIONS", "ROTATION_KINDS", "STATE_VERSION", "BlockPlan", "CohortCorrelation", "CorrelationResult", "Shape",
    "accumulator_bytes", "batch_workspace_bytes", "build_rotation", "combine_blocks", "default_budget_bytes",
    "plan_ref_blocks", "result_frames", "rotation_generator_seed",
]
