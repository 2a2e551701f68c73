"""The decoding engine: sequences, step planners, model runner and the scheduling loop."""
