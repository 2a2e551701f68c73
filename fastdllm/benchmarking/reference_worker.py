"""Times the released Fast-dLLM v2 ``generate`` (its own ``modeling.py``) on token-id prompts.

Run as a script by ``fastdllm.benchmarking.reference`` (for ``fastdllm bench --reference-code``
and ``benchmarks/bench_reference.py``) in a separate interpreter, because the released code
needs the transformers it was written for (4.53; it fails to build its rotary embedding on 5.x)
while fastdllm needs a newer one. It imports nothing from fastdllm.

    python fastdllm/benchmarking/reference_worker.py --reference-code DIR --model CKPT --spec spec.json --out out.json

``DIR`` holds the released ``modeling.py`` and ``configuration.py`` (a released checkpoint
directory has both). They are imported as a throw-away package from a temporary directory, so
their relative import works and nothing is written next to the checkpoint. ``spec.json``:
``{"prompts": [[ids...], ...], "max_new_tokens", "threshold", "block_size", "small_block_size",
"mask_id", "stop_token", "use_block_cache", "threads", "dtype", "restore_block_reset", "device"}``.
The output says whether the given ``modeling.py`` resets the sub-block cache at every block (the
release does; a fork that carries it over does not) and holds, per prompt, the generated ids
(after the prompt, cut after the first stop token as the reference does), the wall time of the
``generate`` call and its forward-pass count.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":
    # run as a script, this file's folder (fastdllm's own modules) comes first on sys.path: drop it so
    # that none of those names can shadow a module that torch or transformers imports
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


BLOCK_LOOP = "for block_idx in range(num_blocks):"


RESET = "block_past_key_values = None"


def resets_block_cache(source: str) -> bool:
    """Whether ``generate`` starts every block with a fresh sub-block cache, as the release does.

    The release sets ``block_past_key_values = None`` at the top of its block loop, before the
    loop over denoising steps; some copies in circulation dropped that line and carry the previous
    block's sub-block cache over (a fork's behaviour, see ../shared/conformance/README.md).
    """
    lines = source.splitlines()
    for i, ln in enumerate(lines):
        if ln.strip() != BLOCK_LOOP:
            continue
        depth = len(ln) - len(ln.lstrip())
        for body in lines[i + 1:]:
            if not body.strip() or body.lstrip().startswith("#"):
                continue
            if len(body) - len(body.lstrip()) <= depth:
                break  # left the block loop
            if body.strip().startswith("while "):
                break  # reached the per-step loop without a reset
            if body.strip() == RESET:
                return True
    return False


def restore_block_reset(source: str) -> str:
    """A fork's copy with the release's per-block reset put back (unchanged when it has it)."""
    if resets_block_cache(source):
        return source
    lines = source.splitlines(keepends=True)
    hits = [i for i, ln in enumerate(lines) if ln.strip() == BLOCK_LOOP]
    if len(hits) != 1:
        raise SystemExit(f"reference_worker: --restore-block-reset expects one '{BLOCK_LOOP}' line in "
                         f"modeling.py, found {len(hits)}")
    i = hits[0]
    indent = lines[i][:len(lines[i]) - len(lines[i].lstrip())] + "    "
    lines.insert(i + 1, f"{indent}{RESET}\n")
    return "".join(lines)


def import_reference(code_dir: Path, restore_reset: bool = False):
    files = [code_dir / "modeling.py", code_dir / "configuration.py"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SystemExit(f"reference_worker: missing {', '.join(missing)} (the released modeling code)")
    pkg_root = Path(tempfile.mkdtemp(prefix="fastdllm_ref_"))
    pkg = pkg_root / "released_fast_dllm_v2"
    pkg.mkdir()
    for f in files:
        shutil.copy(f, pkg / f.name)
    if restore_reset:
        (pkg / "modeling.py").write_text(restore_block_reset((pkg / "modeling.py").read_text()))
    (pkg / "__init__.py").write_text("")
    sys.path.insert(0, str(pkg_root))
    return importlib.import_module("released_fast_dllm_v2.modeling")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference-code", type=Path, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--spec", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    spec = json.loads(args.spec.read_text())

    import torch
    import transformers

    torch.set_num_threads(spec["threads"])
    modeling = import_reference(args.reference_code, spec.get("restore_block_reset", False))
    dtype = getattr(torch, spec.get("dtype", "float32"))
    device = torch.device(spec.get("device", "cpu"))
    model = modeling.Fast_dLLM_QwenForCausalLM.from_pretrained(args.model, torch_dtype=dtype).to(device).eval()

    opts = dict(max_new_tokens=spec["max_new_tokens"], mask_id=spec["mask_id"], threshold=spec["threshold"],
                small_block_size=spec["small_block_size"], block_size=spec["block_size"],
                stop_token=spec["stop_token"], use_block_cache=spec["use_block_cache"], temperature=0)

    # count forward passes at the model itself: the release's generate returns only the ids
    calls = [0]
    plain_forward = model.forward

    def counted_forward(*a, **kw):
        calls[0] += 1
        return plain_forward(*a, **kw)

    model.forward = counted_forward

    def run(ids: list[int], **overrides):
        x = torch.tensor([ids], dtype=torch.long, device=device)
        calls[0] = 0
        t0 = time.perf_counter()
        result = model.generate(x, **{**opts, **overrides})
        if device.type == "cuda":  # the timing must cover the queued GPU work
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        out = result[0] if isinstance(result, tuple) else result
        return out[0, len(ids):].tolist(), seconds, calls[0]

    run(spec["prompts"][0], max_new_tokens=spec["block_size"])  # warm-up, excluded
    rows = []
    for ids in spec["prompts"]:
        tokens, seconds, nfe = run(ids)
        rows.append({"prompt_tokens": len(ids), "tokens": tokens, "seconds": seconds, "nfe": nfe})
    args.out.write_text(json.dumps({"transformers": transformers.__version__, "torch": torch.__version__,
                                    "threads": torch.get_num_threads(), "rows": rows,
                                    "code_resets_block_cache": resets_block_cache(
                                        (args.reference_code / "modeling.py").read_text())}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
