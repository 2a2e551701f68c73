"""``python -m fastdllm``: the same command line as the ``fastdllm`` script."""

from .cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
