#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ingestor_site.settings")
    # A developer's commands in a checkout are local runs (the development SECRET_KEY is allowed);
    # the Docker image sets INGESTOR_LOCAL=false, so there they need a real SECRET_KEY.
    os.environ.setdefault("INGESTOR_LOCAL", "true")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
