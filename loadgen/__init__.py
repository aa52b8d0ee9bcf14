"""The ingestor's load generator, importable without Django.

`python scripts/load_test.py --stress` and `python manage.py loadtest --stress` both run
`loadgen.cli`; the hot loop is in `loadgen.engine`.
"""
