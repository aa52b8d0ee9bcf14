from __future__ import annotations

from django.db import models

CONTENT_MAX_CHARS = 2000
# PostgreSQL's bigint: the widest id the table can store; anything outside is refused at the door.
BIGINT_MAX = 2**63 - 1


class Message(models.Model):
    """A chat message, written by the worker in batches, never updated.

    The table is partitioned by the time in its UUIDv7 id (messages_app/partitions.py): the primary
    key holds the partition key, so one id is one row whenever it arrives.
    """

    # UUIDv7, stamped by the API at receipt (or the client's own, within a day): time-ordered, so
    # inserts append to the index of the newest partition.
    id = models.UUIDField(primary_key=True, editable=False)
    user_id = models.BigIntegerField()
    channel_id = models.BigIntegerField()
    content = models.CharField(max_length=CONTENT_MAX_CHARS)
    created_at = models.DateTimeField(help_text="When the API received the message.")
    inserted_at = models.DateTimeField(
        help_text="When the worker's transaction stored the message: its start, or the message's "
        "receipt where that came later (a job taken in while the transaction ran)."
    )

    class Meta:
        db_table = "messages"
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["-created_at"], name="messages_created_idx"),
            models.Index(fields=["channel_id", "-created_at"], name="messages_channel_created_idx"),
            models.Index(fields=["user_id", "-created_at"], name="messages_user_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.id} channel={self.channel_id} user={self.user_id}"


class DeadLetter(models.Model):
    """A message the worker could not store, kept aside so its batch could land without it."""

    # Unique: a job re-run after its worker died stores its dead letters once.
    message_id = models.UUIDField(unique=True)
    payload = models.JSONField()
    error = models.TextField()
    job_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        db_table = "dead_letters"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"dead letter {self.message_id}"
