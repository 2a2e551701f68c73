"""The denoising page of ``fastdllm serve`` in a real browser: helpers and the README screenshot."""
