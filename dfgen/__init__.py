"""dfgen: invert a trained CNN into a synthetic labelled image dataset (DeepInversion with DearKD's
boundary-preserving diversity losses), written as WebDataset shards.

Python API::

    import dfgen
    dfgen.synthesize(teacher="digits", n=200, out="out/digits")
"""

__version__ = "0.1.0"

from dfgen.config import LossWeights, SynthesisConfig, build_config  # noqa: E402
from dfgen.errors import DfgenError  # noqa: E402
from dfgen.synthesize import synthesize  # noqa: E402

__all__ = ["DfgenError", "LossWeights", "SynthesisConfig", "build_config", "synthesize", "__version__"]
