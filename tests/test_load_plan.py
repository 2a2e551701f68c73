"""``fastdllm.loading.plan``: what a load does is decided before anything is loaded.

The rules themselves (auto int4 for GGUF 4-bit codes, GPTQ in float32, calibration only with
GPTQ) are exercised end to end by test_gguf.py, test_gptq.py and test_loading.py; here the plan
is checked on its own, without building a model.
"""

from __future__ import annotations

import pytest
import torch

from fastdllm.errors import ModelLoadError
from fastdllm.loading.plan import LoadPlan, plan_load


def test_the_default_model_loads_unquantised_in_float32_on_the_cpu():
    plan = plan_load(None)
    assert isinstance(plan, LoadPlan)
    assert (plan.device.type, plan.dtype, plan.quantize, plan.gptq) == ("cpu", torch.float32, None, False)
    assert plan.load_dtype == torch.float32


def test_an_explicit_quantisation_is_kept():
    plan = plan_load(None, quantize="int8")
    assert plan.quantize == "int8" and not plan.gptq


def test_gptq_loads_in_float32_then_quantises():
    plan = plan_load(None, quantize="int4-gptq", calibration=["one prompt", "another"])
    assert plan.gptq and plan.quantize is None and plan.calibration == ["one prompt", "another"]
    assert plan.load_dtype == torch.float32


def test_calibration_needs_gptq():
    with pytest.raises(ModelLoadError, match="calibration"):
        plan_load(None, quantize="none", calibration=["x"])


def test_bad_arguments_fail_in_the_plan():
    with pytest.raises(ModelLoadError):
        plan_load(None, dtype="int7")
    with pytest.raises(ModelLoadError):
        plan_load(None, quantize="int3")
