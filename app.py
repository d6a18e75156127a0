"""Start the lorashear Dash app: ``python app.py`` (shipped demo model), ``python app.py --model DIR``,
``python app.py --config FILE --meta``. Binds to 127.0.0.1:8050 unless told otherwise; see docs/app.md."""
import sys

from viz.app import main

if __name__ == "__main__":
    sys.exit(main())
