"""The wheel works without the source tree: ``python -m build`` makes an sdist and a wheel (the wheel
from the sdist), the wheel holds the default model, the kernel sources and the page's static files and
nothing from tests, benchmarks or examples, and installed (not editable) into a fresh virtual
environment outside the tree it answers ``--version``, ``generate`` and ``serve``.

The fresh environment sees the already installed dependencies (``--system-site-packages``: torch and
the rest are not downloaded again), but fastdllm itself must come from the wheel: the test checks
where it is imported from.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

import fastdllm

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Mia has 245 shells. She finds 38 more at the beach. How many shells does Mia have now?"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FASTDLLM_MODEL", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: build with the installed setuptools instead of fetching one (works offline)
    r = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
                       capture_output=True, text=True, env=_env(), cwd=out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def wheel(dist) -> Path:
    (w,) = dist.glob("fastdllm-*.whl")
    return w


def test_build_makes_an_sdist_and_a_wheel(dist):
    assert len(list(dist.glob(f"fastdllm-{fastdllm.__version__}.tar.gz"))) == 1
    assert len(list(dist.glob(f"fastdllm-{fastdllm.__version__}-py3-none-any.whl"))) == 1


def test_wheel_holds_the_model_kernels_and_page_and_nothing_else(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    model = "fastdllm/models/word_problems/"
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
              "generation_config.json", "heldout.jsonl", "README.md", "ar_parent/model.safetensors",
              "ar_parent/config.json", "ar_parent/tokenizer.json"):
        assert model + f in names, f
    for f in ("cpu_int8.cpp", "cpu_int4.cpp", "cpu_int8a8.cpp", "cpu_int8a8_vnni.cpp", "cpu_stack.cpp",
              "cpu_bindings.cpp", "cpu_quant.h", "cpu_a8.h"):
        assert "fastdllm/kernels/csrc/" + f in names, f
    for f in ("index.html", "denoise.js", "denoise.css"):
        assert "fastdllm/serve/static/" + f in names, f
    top = {n.split("/")[0] for n in names}
    assert top == {"fastdllm", f"fastdllm-{fastdllm.__version__}.dist-info"}, top  # no tests/, benchmarks/, examples/


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("venv")
    assert ROOT not in where.parents
    env = where / "env"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env)], check=True, env=_env())
    r = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                        "--disable-pip-version-check", str(wheel)], capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr
    return env


def _run(venv: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "fastdllm"), *args], capture_output=True, text=True, timeout=timeout,
                          env=_env(), cwd=venv.parent)


def test_installed_from_the_wheel_not_the_tree(venv):
    r = subprocess.run([str(venv / "bin" / "python"), "-c", "import fastdllm; print(fastdllm.__file__)"],
                       capture_output=True, text=True, env=_env(), cwd=venv.parent)
    where = Path(r.stdout.strip())
    assert venv in where.parents and ROOT not in where.parents, r.stdout + r.stderr


def test_version(venv):
    r = _run(venv, "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"fastdllm {fastdllm.__version__}", r.stdout + r.stderr


def test_generate_on_the_default_model(venv):
    r = _run(venv, "generate", PROMPT)
    assert r.returncode == 0, r.stderr
    assert "The answer is" in r.stdout
    assert "mode=diffusion" in r.stderr and "NFE" in r.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_a_chat_completion(venv):
    port = _free_port()
    proc = subprocess.Popen([str(venv / "bin" / "fastdllm"), "serve", "--port", str(port), "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=venv.parent)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not come up in 120 s"
            time.sleep(0.5)
        body = json.dumps({"model": "word-problems", "max_tokens": 200,
                           "messages": [{"role": "user", "content": PROMPT}]}).encode()
        req = urllib.request.Request(base + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.loads(r.read())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert answer["object"] == "chat.completion"
    assert "The answer is" in answer["choices"][0]["message"]["content"]
    assert answer["usage"]["completion_tokens"] > 0 and answer["fastdllm"]["nfe"] > 0
