#!/usr/bin/env python
"""Django's command-line utility for administrative tasks.

With DATABASE_URL / REDIS_URL unset, a command uses this checkout's servers: those `make run`
holds, or embedded ones started for the command (see ingestor_site/local_services.py).
"""

from __future__ import annotations

import os
import sys
import warnings


def _unreachable(error: BaseException) -> str | None:
    """One line for a server a command could not reach, or None for any other error."""
    from django.db import OperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError

    if isinstance(error, OperationalError):
        what, variable = "PostgreSQL", "DATABASE_URL"
    elif isinstance(error, RedisConnectionError):
        what, variable = "Redis", "REDIS_URL"
    else:
        return None
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return (
        f"cannot reach {what} ({reason}); check {variable}={os.environ.get(variable, '')!r}, "
        f"or unset it to use this checkout's embedded server"
    )


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ingestor_site.settings")
    # A developer's commands in a checkout are local runs (the development SECRET_KEY is allowed);
    # the Docker image sets INGESTOR_LOCAL=false, so there they need a real SECRET_KEY.
    os.environ.setdefault("INGESTOR_LOCAL", "true")
    from django.core.management import execute_from_command_line

    from ingestor_site.embedded import ServerStartError
    from ingestor_site.local_services import FolderInUse, command_services

    # Before any `collectstatic` WhiteNoise serves from the app folders (settings.py) and warns
    # that the folder it would collect into is missing: expected, not news.
    warnings.filterwarnings("ignore", message="No directory at: .*staticfiles", category=UserWarning)

    try:
        with command_services(sys.argv):
            execute_from_command_line(sys.argv)
    except (FolderInUse, ServerStartError) as refusal:
        sys.exit(f"manage.py: {refusal}")
    except Exception as error:
        line = _unreachable(error)
        if line is None:
            raise
        sys.exit(f"manage.py: {line}")


if __name__ == "__main__":
    main()
