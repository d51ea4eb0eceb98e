"""Graph-to-graph passes: canonicalize, normalize and the conversions, with the pass infrastructure.

Importing this package registers every pass in :data:`PASSES`, so pipelines can name them.
"""

from snncc.passes import canonicalize, convert_fs, convert_rate, normalize, quantize_neurons, sew  # noqa: F401
from snncc.passes.base import (PASSES, Pass, PassContext, parse_pipeline, pipeline_notes, pipeline_text, register,
                               run_pipeline)

__all__ = ["PASSES", "Pass", "PassContext", "parse_pipeline", "pipeline_notes", "pipeline_text", "register",
           "run_pipeline"]
