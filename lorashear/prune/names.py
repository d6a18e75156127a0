"""The names of the pruning methods, importable without torch (the job kinds and the CLI read them); the
registry in ``methods.py`` is built in this order and checked against it."""
METHODS = ("lhspg", "llm-pruner", "loraprune", "flap", "magnitude", "random")
TRAINING_FREE = ("llm-pruner", "flap", "magnitude", "random")  # one-shot: --steps 0 allowed
# group kinds a plan may prune (``plan.KINDS`` is this tuple): whole kv heads with their queries, GQA query heads
# (the i-th query head of every kv group), MLP channels, hidden channels
PLAN_KINDS = ("attention", "query_heads", "mlp", "hidden")
