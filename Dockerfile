# One image for the web server and the workers (docker-compose.yml picks the command).
FROM python:3.11-slim

# INGESTOR_LOCAL=false: the settings refuse to start without a real SECRET_KEY, `manage.py` too.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    INGESTOR_LOCAL=false

# A fixed uid, so volumes and a platform's "run as non-root" check know whom to expect.
RUN groupadd --system --gid 10001 ingestor \
    && useradd --system --uid 10001 --gid ingestor --no-create-home --shell /usr/sbin/nologin ingestor

WORKDIR /app
# Only the app's own dependencies: not the `local` extra (embedded PostgreSQL and Redis, which
# compose replaces with real servers) nor `dev`.
COPY pyproject.toml README.md ./
RUN pip install --no-cache-dir .
COPY . .
# The code and the collected static files stay owned by root: the app only reads them. Collecting
# needs no secret, so a throwaway key serves for this one build step.
RUN SECRET_KEY=collectstatic-at-build-time python manage.py collectstatic --noinput -v 0
# Bytecode now: PYTHONDONTWRITEBYTECODE (and a read-only /app) would make every process compile our
# modules again at every start, ~1 MB more resident in each (README, Memory).
RUN python -m compileall -q ingestor_site messages_app metrics_app telemetry loadgen

USER 10001:10001
EXPOSE 8000
# granian with the same connection limits, timeouts and respawn as `make run` (README, Operations).
CMD ["python", "-m", "ingestor_site.processes", "web", "--host", "0.0.0.0", "--port", "8000", "--processes", "2"]
