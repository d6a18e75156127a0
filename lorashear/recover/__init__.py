"""Knowledge recovery: a data mixture that follows where the pruned model lags (``update_weights``), then
instruction tuning — ``recover`` is the one call behind the CLI, the job and the app."""
from .mixture import update_weights
from .run import RecoverSettings, recover

__all__ = ["RecoverSettings", "recover", "update_weights"]
