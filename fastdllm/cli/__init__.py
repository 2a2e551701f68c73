"""The ``fastdllm`` command line: one module per subcommand (see ``fastdllm.cli.main``)."""
