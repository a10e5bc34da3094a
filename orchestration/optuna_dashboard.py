"""The Optuna dashboard `make ui OPTUNA_DASHBOARD=1` starts: optuna-dashboard on the project's
study storage, which it reads from the environment (PROPENSITY_OPTUNA_STORAGE), so that a
PostgreSQL URL with its password never shows on a command line (`ps` lists those to everyone).

    python -m orchestration.optuna_dashboard [--host 127.0.0.1] [--port 8080]
"""

import argparse
import contextlib
import sys
from collections.abc import Sequence

import optuna_dashboard

from ml import settings
from ml.study import optuna_storage


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    # A journal file or an RDB URL, opened as every study opens it (ml.study.optuna_storage).
    storage = optuna_storage(settings.optuna_storage())
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C from `make ui`
        optuna_dashboard.run_server(storage, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
