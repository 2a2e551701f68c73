"""``fastdllm kernels status`` / ``build``: what they report, and the one fallback line when no
compiler can build the kernels."""

from __future__ import annotations

import logging

import pytest

from fastdllm.cli.main import main
from fastdllm.kernels import cpu_info, native
from tests.test_quant import needs_native


def test_status_names_the_isa_the_compiler_and_a_kernel_per_path(capsys):
    assert main(["kernels", "status"]) == 0
    out = capsys.readouterr().out
    for word in ("isa:", "avx2", "avx512_vnni", "amx_int8", "compiler:", "build:", native.build_name()):
        assert word in out
    for path in ("float32", "bfloat16", "int8", "int8, int8 activations", "int4"):
        assert f"\n  {path} " in out
    if native.built():
        assert f"fastdllm W8A8, {cpu_info.w8a8_isa()}" in out and "fallback" not in out


def test_w8a8_path_follows_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(cpu_info, "flags", lambda: frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512vl"}))
    assert cpu_info.w8a8_isa() == "avx2"  # AVX-512 without VNNI (Skylake-X): the AVX2 kernel
    monkeypatch.setattr(cpu_info, "flags", lambda: frozenset({"avx2", "avx512f", "avx512bw", "avx512vl",
                                                               "avx512_vnni"}))
    assert cpu_info.w8a8_isa() == "avx512-vnni"
    monkeypatch.setattr(cpu_info, "flags", lambda: frozenset({"avx2", "avx512f", "avx512bw", "avx512vl",
                                                               "avx512_vnni", "amx_tile", "amx_int8"}))
    assert cpu_info.w8a8_isa() == "amx"  # Sapphire Rapids and later
    monkeypatch.setattr(cpu_info, "flags", lambda: frozenset({"avx2", "amx_tile", "amx_int8"}))
    assert cpu_info.w8a8_isa() == "avx2"  # the AMX path's epilogue is AVX-512


@needs_native
def test_w8a8_path_agrees_with_the_kernel():
    assert native.kernels().int8a8_isa() == cpu_info.w8a8_isa()


@pytest.fixture
def no_compiler(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    monkeypatch.setattr(native, "_state", {})  # nothing loaded yet in this process's view
    monkeypatch.setattr(native, "built", lambda: False)  # and no cached build to load


def test_status_without_a_compiler_says_the_fallback_once(no_compiler, capsys):
    assert main(["kernels", "status"]) == 0
    out = capsys.readouterr().out
    fallback = [line for line in out.splitlines() if line.startswith("fallback:")]
    assert len(fallback) == 1 and "no C++ compiler" in fallback[0] and "bfloat16-input" in fallback[0]
    assert "torch _weight_int8pack_mm" in out


def test_no_compiler_means_one_warning_and_torchs_kernels(no_compiler, caplog):
    with caplog.at_level(logging.WARNING, logger="fastdllm.kernels.native"):
        assert native.kernels() is None
        assert native.kernels() is None  # asked again: decided once, not warned again
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "no C++ compiler" in warnings[0] and "bfloat16-input" in warnings[0]


def test_build_without_a_compiler_is_an_error_line(no_compiler, capsys):
    assert main(["kernels", "build"]) == 2
    err = capsys.readouterr().err
    assert "could not be built" in err and "no C++ compiler" in err
