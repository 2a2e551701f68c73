"""benchmarks/bench_sweep.py: the size sweep's JSON, break-even arithmetic, tables and plot, on the
two-layer ``tiny`` shape (timings are not asserted, only what the sweep derives from them)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from fastdllm.kernels import native

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_sweep", ROOT / "benchmarks" / "bench_sweep.py")
bs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bs)

PATHS = "float32,int8" if native.available() else "float32"
E2E = ["--end-to-end", "--new-tokens", "8", "--prompts", "1", "--confidence-scale", "20", "--rounds", "3"]


def check_end_to_end(e2e: dict, paths: list[str], rounds: int = 1) -> None:
    assert list(e2e["paths"]) == paths and e2e["rounds"] == rounds
    best_ar = max(r["ar"]["tokens_per_s"] for r in e2e["paths"].values())
    assert e2e["fastest_ar_tokens_per_s"] == pytest.approx(best_ar)
    for r in e2e["paths"].values():
        assert r["ar"]["tpf"] == 1.0
        for v in r.values():  # the median round
            assert len(v["rounds_tokens_per_s"]) == rounds
            assert v["tokens_per_s"] == sorted(v["rounds_tokens_per_s"])[rounds // 2]
        for k in ("bd_cache", "bd_no_cache"):
            assert 1.0 <= r[k]["tpf"] <= bs.SUB_BLOCK
            assert r[k]["break_even_tpf"] == pytest.approx(r[k]["tpf"] * best_ar / r[k]["tokens_per_s"])


def test_sweep_writes_forwards_break_even_end_to_end_tables_and_plot(tmp_path, capsys):
    out = tmp_path / "sweep.json"
    assert bs.main(["--shapes", "tiny", "--paths", PATHS, "--rows", "1,8", "--contexts", "16", "--repeats", "1",
                    "--threads", "1", "--llama-cpp", "none", "--out", str(out), *E2E]) == 0
    res = json.loads(out.read_text())
    assert {"cpu", "isa", "threads", "load_average", "load_average_end"} <= set(res["machine"])
    assert res["peaks"]["float32_gflops"] > 0 and res["peaks"]["read_gbs"] > 0
    s = res["shapes"]["tiny"]
    ctx = s["contexts"]["16"]
    assert list(ctx["forward_ms"]) == PATHS.split(",")
    one = {p: t["1"] for p, t in ctx["forward_ms"].items()}
    assert ctx["fastest_ar_ms"] == min(one.values()) and one[ctx["fastest_ar_path"]] == ctx["fastest_ar_ms"]
    cfg = bs.ModelConfig.from_dict({**bs.SHAPES["tiny"], "max_position_embeddings": 4096})
    for p, t in ctx["forward_ms"].items():  # only the 8-row forward was measured: no 32-row break-even
        assert ctx["break_even_tpf"][p] == {"rows_8": pytest.approx(t["8"] / ctx["fastest_ar_ms"])}
        for n in ("1", "8"):  # rates are the work of that forward over its time
            assert ctx["gflops"][p][n] * t[n] == pytest.approx(bs.work(cfg, int(n), 16, 0)["flop"] / 1e6)
            assert ctx["gbs"][p][n] * t[n] == pytest.approx(ctx["weight_mb"][p])
    check_end_to_end(s["end_to_end"], PATHS.split(","), rounds=3)
    assert out.with_suffix(".png").stat().st_size > 10_000
    text = capsys.readouterr().out
    assert "**tiny**, context 16" in text and "**tiny** end to end (confidence scale 20.0" in text and "median of 3 round(s)" in text
    assert text.count("| float32 |") == 2  # one row in the end-to-end table, one in the context's
    assert bs.markdown(res) in text


def test_end_to_end_only_measures_no_forwards_and_draws_no_plot(tmp_path, capsys):
    out = tmp_path / "e2e.json"
    assert bs.main(["--shapes", "tiny", "--paths", "float32", "--threads", "1", "--out", str(out),
                    "--end-to-end-only", "--new-tokens", "8", "--prompts", "1", "--confidence-scale", "20"]) == 0
    s = json.loads(out.read_text())["shapes"]["tiny"]
    assert s["contexts"] == {} and s["layer_gemm"] == {}
    check_end_to_end(s["end_to_end"], ["float32"])
    assert not out.with_suffix(".png").exists()
    text = capsys.readouterr().out
    assert "end to end" in text and "context" not in text.split("end to end", 1)[1].split("\n", 2)[2]


def test_prefill_times_each_prompt_length_per_path(tmp_path, capsys):
    out = tmp_path / "prefill.json"
    assert bs.main(["--shapes", "tiny", "--paths", PATHS, "--threads", "1", "--contexts", "", "--repeats", "2",
                    "--llama-cpp", "none", "--prefill", "16,40", "--out", str(out)]) == 0
    s = json.loads(out.read_text())["shapes"]["tiny"]
    assert s["contexts"] == {} and list(s["prefill"]) == PATHS.split(",")
    for row in s["prefill"].values():
        assert list(row) == ["16", "40"]
        for n, v in row.items():
            assert v["seconds"] > 0 and v["tokens_per_s"] == pytest.approx(int(n) / v["seconds"])
    table = bs.markdown(json.loads(out.read_text()))
    assert "prefill" in table and "| 16 | 40 |" in table
    assert "prefill" in capsys.readouterr().out


def test_prefill_past_the_default_context():
    """A prompt longer than the sweep's usual 4,096 positions gets a model that takes it."""
    assert bs.build("tiny", "float32", positions=5000).cfg.max_position_embeddings == 5000


def test_llama_cpp_rows_or_the_reason_they_are_missing(tmp_path):
    out = tmp_path / "sweep.json"
    assert bs.main(["--shapes", "tiny", "--paths", "float32", "--rows", "1,2", "--contexts", "8", "--repeats", "1",
                    "--threads", "1", "--llama-cpp", "Q8_0", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    ctx = res["shapes"]["tiny"]["contexts"]["8"]
    why = res["skipped"].get("llama.cpp")
    if importlib.util.find_spec("llama_cpp") is None:
        assert "llama-cpp-python is not installed" in why
    if why:  # not installed, or a build that cannot decode: the reason, and no llama.cpp rows
        assert why.startswith("llama-cpp-python")
        assert list(ctx["forward_ms"]) == ["float32"]
    else:
        assert list(ctx["forward_ms"]) == ["float32", "llama.cpp Q8_0"]
        assert set(ctx["forward_ms"]["llama.cpp Q8_0"]) == {"1", "2"} and ctx["llama_cpp_version"]
        one = {p: t["1"] for p, t in ctx["forward_ms"].items()}
        assert ctx["fastest_ar_ms"] == min(one.values())  # llama.cpp's one-row forward counts as an AR path


def test_unknown_shape_or_path_is_refused(tmp_path):
    with pytest.raises(SystemExit) as e:
        bs.main(["--shapes", "tiny,nonesuch", "--out", str(tmp_path / "x.json")])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        bs.main(["--shapes", "tiny", "--paths", "float64", "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit):
        bs.main(["--shapes", "tiny", "--llama-cpp", "Q4_1", "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


@pytest.mark.skipif(not native.available(), reason="the native kernels are needed")
def test_stack_split_times_the_forward_and_its_products(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_stack_split", ROOT / "benchmarks" / "bench_stack_split.py")
    split = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(split)
    out = tmp_path / "split.json"
    assert split.main(["--shape", "tiny", "--rows", "1,3", "--context", "16", "--repeats", "1", "--threads", "1",
                       "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["shape"] == "tiny" and [r["rows"] for r in d["rows"]] == [1, 3]
    for r in d["rows"]:
        assert r["forward_ms"] > 0 and r["products_ms"] > 0
        assert r["rest_ms"] == pytest.approx(r["forward_ms"] - r["products_ms"])
