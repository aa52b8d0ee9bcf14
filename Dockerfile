# One image for the web server and the workers (docker-compose.yml picks the command).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
RUN pip install --no-cache-dir .
COPY . .
RUN python manage.py collectstatic --noinput -v 0

EXPOSE 8000
CMD ["python", "-m", "granian", "--interface", "asginl", "--host", "0.0.0.0", "--port", "8000", "--workers", "2", "ingestor_site.asgi:application"]
