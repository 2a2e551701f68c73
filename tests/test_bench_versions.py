"""benchmarks/bench_versions.py: two trees decode the same prompts, in their own processes, compared."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_versions", ROOT / "benchmarks" / "bench_versions.py")
bv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bv)

SMALL = ["--problems", "2", "--rounds", "2", "--modes", "diffusion", "--batch", "1", "--max-new-tokens", "24",
         "--threads", "1"]

# A tree whose fastdllm answers every prompt with the same three tokens: another "version" that
# decodes differently, so the comparison has something to find.
FAKE = '''
from types import SimpleNamespace

def load(model=None, **kw):
    class LLM:
        def generate(self, prompts, **kw):
            prompts = [prompts] if isinstance(prompts, str) else prompts
            return [SimpleNamespace(token_ids=[5, 6, 7], text="") for _ in prompts]
    return LLM()
'''


def fake_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "fake"
    (tree / "fastdllm").mkdir(parents=True)
    (tree / "fastdllm" / "__init__.py").write_text(FAKE)
    return tree


def test_the_same_tree_twice_gives_the_same_tokens_and_every_round(tmp_path):
    out = tmp_path / "v.json"
    assert bv.main(["--baseline", str(ROOT), "--out", str(out), *SMALL]) == 0
    rec = json.loads(out.read_text())
    (row,) = rec["results"]
    assert row["same_tokens"] is True
    assert len(row["rounds"]["baseline"]) == len(row["rounds"]["this"]) == 2
    assert all(v > 0 for v in row["rounds"]["baseline"] + row["rounds"]["this"])
    assert row["ratio"] == pytest.approx(row["tokens_per_s"]["this"] / row["tokens_per_s"]["baseline"])
    assert rec["settings"]["baseline"] == str(ROOT) and rec["machine"]["cores"] >= 1


def test_a_tree_that_decodes_otherwise_is_reported_as_not_like_for_like(tmp_path, capsys):
    out = tmp_path / "v.json"
    assert bv.main(["--baseline", str(fake_tree(tmp_path)), "--baseline-commit", "fake", "--out", str(out),
                    *SMALL]) == 0
    rec = json.loads(out.read_text())
    assert rec["results"][0]["same_tokens"] is False and rec["commits"]["baseline"] == "fake"
    assert " NO" in capsys.readouterr().out


def test_a_tree_without_fastdllm_is_refused(tmp_path):
    with pytest.raises(SystemExit) as e:
        bv.main(["--baseline", str(tmp_path), *SMALL])
    assert e.value.code == 2


def test_a_failing_tree_raises_with_its_error(tmp_path):
    tree = fake_tree(tmp_path)
    (tree / "fastdllm" / "__init__.py").write_text("raise ImportError('this version is broken')\n")
    with pytest.raises(RuntimeError, match="this version is broken"):
        bv.main(["--baseline", str(tree), "--out", str(tmp_path / "v.json"), *SMALL])
