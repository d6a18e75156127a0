"""The names of the pruning methods, importable without torch (the settings schema, the job kinds and the CLI read
them); the registry in ``methods.py`` is built in this order and checked against it."""
METHODS = ("lhspg", "llm-pruner", "loraprune", "flap", "magnitude", "random")
# methods that choose every unit once, on the dense model, before any training (so --steps 0 is a valid run:
# the one-shot result with no recovery); lhspg and loraprune prune while training
ONE_SHOT = ("llm-pruner", "flap", "magnitude", "random")
# group kinds a plan may prune (``plan.KINDS`` is this tuple): whole kv heads with their queries, GQA query heads
# (the i-th query head of every kv group), MLP channels, hidden channels
PLAN_KINDS = ("attention", "query_heads", "mlp", "hidden")
