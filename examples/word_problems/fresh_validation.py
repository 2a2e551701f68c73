"""Decoding settings re-measured on fresh validation problems: held-out wordings, none of the
evaluation's 500 problems nor the 200 the build's sweep chose on, drawn with their own seed.

The build picks its shipped decoding among 20 settings on 200 validation problems; this asks
whether the pick holds on problems it never saw, and where the left-to-right ceiling of the
ordered accept rules is (``joint`` at threshold 1.0: the block-diffusion weights decoding one
token a forward, left to right). Prints one line per setting; writes JSON.

    python examples/word_problems/fresh_validation.py --run RUN [--n 600] [--seed 7]
        [--out benchmarks/results/decoding_fresh_validation.json]
    # another candidate model on the same problems, three settings, without the parent's row:
    python examples/word_problems/fresh_validation.py --run RUN --bd CANDIDATE_DIR --no-parent \
        --settings 32/joint/0.99,32/joint/1.0,4/threshold/0.9 --out candidate.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from examples.word_problems import build as B  # noqa: E402
from examples.word_problems import problems as P  # noqa: E402

# (sub-block, rule, threshold) at block 32: the shipped one, its neighbours, the ceiling, Fast-dLLM v2's
SETTINGS = ((32, "joint", 0.99), (16, "joint", 0.99), (8, "joint", 0.99), (4, "joint", 0.99),
            (4, "joint", 0.95), (32, "joint", 1.0), (4, "threshold", 0.9))


def fresh_problems(run: Path, n: int, seed: int) -> list[P.Problem]:
    """``n`` held-out-wording problems outside the evaluation's and the sweep's (seed 0 build)."""
    held = P.read_jsonl(run / "data" / "heldout.jsonl")
    swept = B.validation_split(B.FULL.n_sweep, 0, held)
    return P.held_out_except(n, {p.question for p in held} | {p.question for p in swept}, seed)


def parse_settings(text: str) -> tuple[tuple[int, str, float], ...]:
    """``SUB_BLOCK/RULE/THRESHOLD,...`` -> settings (block 32)."""
    from fastdllm.engine.acceptance import RULES

    out = []
    for item in filter(None, text.split(",")):
        try:
            sbs, rule, thr = item.split("/")
            setting = (int(sbs), rule, float(thr))
        except ValueError:
            raise SystemExit(f"--settings: {item!r} is not SUB_BLOCK/RULE/THRESHOLD (e.g. 32/joint/0.99)") from None
        if setting[0] not in (1, 2, 4, 8, 16, 32) or rule not in RULES or not 0.0 <= setting[2] <= 1.0:
            raise SystemExit(f"--settings: {item!r}: the sub-block divides 32, the rule is one of "
                             f"{', '.join(RULES)}, the threshold is in [0, 1]")
        out.append(setting)
    return tuple(out)


def main(argv: list[str] | None = None) -> int:
    import fastdllm

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="the build's run directory (data/, ar/, bd/)")
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/decoding_fresh_validation.json"))
    ap.add_argument("--bd", type=Path, help="the block-diffusion model to score (default: RUN/bd)")
    ap.add_argument("--settings", type=parse_settings, default=SETTINGS,
                    help="SUB_BLOCK/RULE/THRESHOLD,... at block 32 (default: the seven above)")
    ap.add_argument("--no-parent", action="store_true", help="leave out the AR parent's row")
    args = ap.parse_args(argv)
    problems = fresh_problems(args.run, args.n, args.seed)
    rows = []
    if not args.no_parent:
        e = B.evaluate(fastdllm.load(str(args.run / "ar")), problems, "ar", desc="AR parent")
        rows.append({"setting": "AR parent", "small_block_size": None, "acceptance": None, "threshold": None,
                     "accuracy": e["accuracy"], "tpf": e["tpf"], "tokens_per_s": e["tokens_per_s"]})
        print(rows[-1], flush=True)
    bd_dir = args.bd or args.run / "bd"
    bd = fastdllm.load(str(bd_dir))
    for sbs, rule, thr in args.settings:
        e = B.evaluate(bd, problems, "diffusion", thr, acceptance=rule, block_size=32, small_block_size=sbs,
                       desc=f"sub-block {sbs}, {rule} {thr}")
        rows.append({"setting": f"sub-block {sbs}, {rule} {thr:g}", "small_block_size": sbs, "acceptance": rule,
                     "threshold": thr, "accuracy": e["accuracy"], "tpf": e["tpf"], "tokens_per_s": e["tokens_per_s"]})
        print(rows[-1], flush=True)
    args.out.write_text(json.dumps({"n": len(problems), "seed": args.seed, "model": str(bd_dir), "rows": rows, "machine": B.machine_info(),
                                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                                    "command": "python examples/word_problems/fresh_validation.py " + " ".join(
                                        argv if argv is not None else sys.argv[1:])}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
