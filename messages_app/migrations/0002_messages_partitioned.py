"""`messages` becomes partitioned by the time in its UUIDv7 ids, with the rows it holds.

The copy runs in this migration's transaction with the table locked: workers wait (their jobs
retry with backoff) while the API keeps accepting into Redis. The README gives its duration.
"""

from django.db import migrations

from messages_app import partitions


def forward(apps, schema_editor):
    if partitions.is_partitioned():
        return
    partitions.messages_table_convert(schema_editor, apps.get_model("messages_app", "Message"))


def backward(apps, schema_editor):
    if partitions.is_partitioned():
        partitions.messages_table_unconvert(schema_editor, apps.get_model("messages_app", "Message"))


class Migration(migrations.Migration):
    dependencies = [("messages_app", "0001_initial")]

    operations = [migrations.RunPython(forward, backward, elidable=False)]
