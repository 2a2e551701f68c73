"""fastdllm: block-diffusion LLM inference and training (Fast-dLLM v2 style).

    import fastdllm
    llm = fastdllm.load("Efficient-Large-Model/Fast_dLLM_v2_1.5B", dtype="bfloat16")
    print(llm.generate("Why is the sky blue?")[0].text)
"""

from .api import LLM, GenerationResult, GenerationStats, load
from .errors import FastDLLMError, InvalidRequestError, ModelLoadError, UnsupportedModelError
from .engine.sampling import SamplingParams

__version__ = "0.1.0"
__all__ = ["LLM", "GenerationResult", "GenerationStats", "load", "FastDLLMError", "InvalidRequestError",
           "ModelLoadError", "UnsupportedModelError", "SamplingParams", "__version__"]
