"""CPU kernels: oneDNN linear layers, compiled decode regions and fastdllm's native C++ kernels.

``onednn.py`` (prepacked linear layers), ``compiled.py`` (torch.compile'd decode regions),
``native.py`` (the int8/int4 C++ extension and its build; sources in ``csrc/``), ``stack.py``
(a quantised model's whole layer stack in one C++ call), ``cpu_info.py`` and ``precision.py``
(what this CPU and toolchain can run). Nothing here imports the engine.
"""
