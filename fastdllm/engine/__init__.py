"""The decoding engine: sequences, step planners, model runner and the scheduling loop.

The engine owns what the model does not know about: the KV cache (``kv_cache.py``), attention
over it (``packed_attention.py``, ``cached_attention.py``), host/device transfers
(``device.py``), sampling (``sampling.py``), the forward backend that runs the model
(``backend.py``) and the timing hooks around it (``hooks.py``).
"""
