"""The names of the pruning methods, importable without torch (the job kinds and the CLI read them); the
registry in ``methods.py`` is built in this order and checked against it."""
METHODS = ("lhspg", "llm-pruner", "loraprune", "flap", "magnitude", "random")
TRAINING_FREE = ("llm-pruner", "flap", "magnitude", "random")  # one-shot: --steps 0 allowed
