"""OpenAPI 3 description of the JSON API (tests check it against the URLconf and real answers)."""

from __future__ import annotations

from typing import Any

from messages_app.models import BIGINT_MAX, CONTENT_MAX_CHARS
from messages_app.simulate import SIMULATE_MAX

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": _json(_ERROR, "Malformed JSON"),
    "401": _json(_ERROR, "Missing or unknown API key (only when INGEST_API_KEYS is set)"),
    "408": _json(_ERROR, "The body did not all arrive within INGEST_BODY_TIMEOUT_S"),
    "409": _json(
        _ERROR, "The client `id` was already used with different content (within INGEST_IDEMPOTENCY_WINDOW_S)"
    ),
    "413": _json(_ERROR, "Body or batch too large"),
    "429": _json(_ERROR, "Over INGEST_RATE_LIMIT; see Retry-After and the RateLimit-* headers"),
    "415": _json(_ERROR, "Content-Type is not application/json"),
    "422": _json(_ERROR, "Invalid fields; `errors` maps each field to its reason"),
    "503": _json(_ERROR, "Redis unreachable or backlog over INGEST_MAX_BACKLOG; see Retry-After"),
}

OPENAPI_SCHEMA: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "ingestor",
        "version": "0.1.0",
        "description": "Accepts chat messages, buffers them in Redis, stores them in PostgreSQL.",
    },
    "paths": {
        "/messages": {
            "post": {
                "summary": "Queue one message",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/MessageIn"}}},
                },
                "responses": {
                    "201": _json({"$ref": "#/components/schemas/Queued"}, "In Redis, will be stored"),
                    **_ERRORS,
                },
            },
            "get": {
                "summary": "Latest persisted messages, newest first",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                    {"name": "channel_id", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                    {"name": "user_id", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["messages", "count"],
                            "properties": {
                                "messages": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Message"},
                                },
                                "count": {"type": "integer"},
                            },
                        },
                        "Messages",
                    ),
                    "422": _ERRORS["422"],
                    "503": _json(_ERROR, "PostgreSQL unreachable; see Retry-After"),
                },
            },
        },
        "/messages/batch": {
            "post": {
                "summary": "Queue many messages; bad items never hold back good ones",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["messages"],
                                "properties": {
                                    "messages": {
                                        "type": "array",
                                        "minItems": 1,
                                        "items": {"$ref": "#/components/schemas/MessageIn"},
                                    }
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "201": _json({"$ref": "#/components/schemas/BatchQueued"}, "Accepted items are in Redis"),
                    **_ERRORS,
                },
            }
        },
        "/health": {
            "get": {
                "summary": "Readiness: Redis and PostgreSQL reachable",
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Health"}, "Healthy"),
                    "503": _json({"$ref": "#/components/schemas/Health"}, "A dependency is down"),
                },
            }
        },
        "/health/live": {
            "get": {
                "summary": "Liveness: the process answers",
                "responses": {"200": _json({"type": "object"}, "Alive")},
            }
        },
        "/queue/status": {
            "get": {
                "summary": "Backlog, jobs, workers and the last batch",
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/QueueStatus"}, "Queue state"),
                    "503": _ERRORS["503"],
                },
            }
        },
        "/stats": {
            "get": {
                "summary": "Pipeline metrics as JSON (the dashboard's numbers)",
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Stats"}, "Metrics snapshot"),
                    "503": _ERRORS["503"],
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Pipeline metrics in Prometheus text format",
                "responses": {
                    "200": {
                        "description": "Counters, gauges and the latency histogram",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "503": _ERRORS["503"],
                },
            }
        },
        "/simulate": {
            "post": {
                "summary": "Generate a burst of messages server-side (the dashboard's button)",
                "description": "Runs behind Django's session and CSRF middleware, like the dashboard.",
                "requestBody": {
                    "required": True,
                    "content": {
                        media_type: {
                            "schema": {
                                "type": "object",
                                "required": ["count"],
                                "properties": {
                                    "count": {"type": "integer", "minimum": 1, "maximum": SIMULATE_MAX}
                                },
                            }
                        }
                        for media_type in ("application/json", "application/x-www-form-urlencoded")
                    },
                },
                "responses": {
                    "202": _json({"$ref": "#/components/schemas/Accepted"}, "The burst is in Redis"),
                    "403": {"description": "CSRF check failed"},
                    "422": _ERRORS["422"],
                    "429": _json(_ERROR, "Over SIMULATE_RATE_LIMIT (per client address)"),
                    "503": _ERRORS["503"],
                },
            }
        },
        "/reset": {
            "delete": {
                "summary": "Delete every message and dead letter and zero the counters (staff only)",
                "description": "Needs a staff session and a CSRF token; queued jobs still land.",
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Accepted"}, "Reset done"),
                    "403": _json(_ERROR, "Not a staff user, or the CSRF check failed"),
                    "503": _ERRORS["503"],
                },
            }
        },
        "/openapi.json": {
            "get": {"summary": "This document", "responses": {"200": _json({"type": "object"}, "OpenAPI 3")}}
        },
    },
    "components": {
        "schemas": {
            "MessageIn": {
                "type": "object",
                "required": ["user_id", "channel_id", "content"],
                "properties": {
                    "user_id": {"type": "integer", "minimum": 1, "maximum": BIGINT_MAX},
                    "channel_id": {"type": "integer", "minimum": 1, "maximum": BIGINT_MAX},
                    "content": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": CONTENT_MAX_CHARS,
                        "description": "Stripped; must not be blank and must not contain NUL.",
                    },
                    "id": {
                        "type": "string",
                        "format": "uuid",
                        "description": "Optional idempotency key: a UUIDv7 minted within the last 24 hours "
                        "(or MESSAGE_RETENTION if shorter) and at most 5 minutes ahead; other ids are a 422.",
                    },
                },
            },
            "Queued": {
                "type": "object",
                "required": ["message_id", "status", "queued_at"],
                "properties": {
                    "message_id": {"type": "string", "format": "uuid"},
                    "status": {"type": "string", "enum": ["queued"]},
                    "queued_at": {"type": "string", "format": "date-time"},
                    "replay": {
                        "type": "boolean",
                        "description": "Only with a client `id`: true when that id came before with the same "
                        "content (stored once, whatever the number of replays)",
                    },
                },
            },
            "BatchQueued": {
                "type": "object",
                "required": ["accepted", "message_ids", "rejected"],
                "properties": {
                    "accepted": {"type": "integer"},
                    "message_ids": {"type": "array", "items": {"type": "string", "format": "uuid"}},
                    "rejected": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "index": {"type": "integer"},
                                "errors": {"type": "object"},
                                "status": {
                                    "type": "integer",
                                    "description": "409: `id` reused with other content",
                                },
                            },
                        },
                    },
                    "replays": {
                        "type": "array",
                        "description": "Accepted items whose client `id` came before with the same content "
                        "(in an earlier request or earlier in this batch): stored once",
                        "items": {
                            "type": "object",
                            "properties": {
                                "index": {"type": "integer"},
                                "id": {"type": "string", "format": "uuid"},
                            },
                        },
                    },
                    "status": {"type": "string"},
                    "queued_at": {"type": "string", "format": "date-time"},
                },
            },
            "Message": {
                "type": "object",
                "properties": {
                    "id": {"type": "string", "format": "uuid"},
                    "user_id": {"type": "integer"},
                    "channel_id": {"type": "integer"},
                    "content": {"type": "string"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "inserted_at": {"type": "string", "format": "date-time"},
                },
            },
            "Health": {
                "type": "object",
                "required": ["status", "redis", "database", "queue_length"],
                "properties": {
                    "status": {"type": "string", "enum": ["healthy", "unhealthy"]},
                    "redis": {"type": "string", "enum": ["connected", "disconnected"]},
                    "database": {"type": "string", "enum": ["connected", "disconnected"]},
                    "queue_length": {"type": "integer", "nullable": True},
                },
            },
            "QueueStatus": {
                "type": "object",
                "required": ["backlog_messages", "jobs_queued", "jobs_running", "workers", "last_batch"],
                "properties": {
                    "queue": {"type": "string"},
                    "backlog_messages": {"type": "integer"},
                    "jobs_queued": {"type": "integer"},
                    "jobs_running": {"type": "integer"},
                    "jobs_scheduled_for_retry": {"type": "integer"},
                    "jobs_failed": {"type": "integer"},
                    "workers": {"type": "integer"},
                    "dead_letters": {"type": "integer"},
                    "last_batch": {"type": "object", "nullable": True},
                },
            },
            "Stats": {
                "type": "object",
                "required": [
                    "total_messages",
                    "total_batches",
                    "queue_length",
                    "total_accepted",
                    "total_dead_letters",
                    "current_rps",
                    "avg_latency_ms",
                    "p50_latency_ms",
                    "p95_latency_ms",
                    "p99_latency_ms",
                    "timestamp",
                ],
                "properties": {
                    **{
                        name: {"type": "integer", "minimum": 0}
                        for name in (
                            "total_messages",
                            "total_batches",
                            "queue_length",
                            "total_accepted",
                            "total_dead_letters",
                        )
                    },
                    **{
                        name: {"type": "number", "minimum": 0}
                        for name in (
                            "current_rps",
                            "avg_latency_ms",
                            "p50_latency_ms",
                            "p95_latency_ms",
                            "p99_latency_ms",
                        )
                    },
                    "timestamp": {"type": "number", "description": "Unix time of the snapshot"},
                },
            },  # fmt: skip
            "Accepted": {
                "type": "object",
                "required": ["detail", "status"],
                "properties": {
                    "detail": {"type": "string"},
                    "status": {"type": "string"},
                    "accepted": {"type": "integer"},
                },
            },
            "Error": {
                "type": "object",
                "required": ["detail"],
                "properties": {
                    "detail": {"type": "string"},
                    "errors": {"type": "object"},
                    "message_ids": {
                        "type": "array",
                        "items": {"type": "string", "format": "uuid"},
                        "description": "On a 503 from an unreachable Redis: the ids the messages had, "
                        "to send back as `id` when retrying (an enqueue that timed out may have landed)",
                    },
                },
            },
        }
    },
}
