"""The dtypes a config or a model dir may name, as NumPy dtypes (Flax and JAX accept them)."""

import ml_dtypes
import numpy as np

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
