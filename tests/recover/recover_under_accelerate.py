"""``accelerate launch recover_under_accelerate.py PRUNED DENSE OUT SETTINGS_JSON``: the library call under
accelerate, with settings the CLI does not expose (a small instruction validation set keeps the test fast)."""
import json
import sys

from lorashear.recover import recover

if __name__ == "__main__":
    pruned, dense, out, settings = sys.argv[1:5]
    recover(pruned, out, dense=dense, **json.loads(settings))
