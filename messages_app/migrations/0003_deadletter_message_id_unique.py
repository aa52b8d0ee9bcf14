"""One dead letter per message id, so a re-run job does not store its dead letters again."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("messages_app", "0002_messages_partitioned")]

    operations = [
        migrations.RunSQL(
            "DELETE FROM dead_letters a USING dead_letters b WHERE a.message_id = b.message_id AND a.id > b.id",
            migrations.RunSQL.noop,
        ),
        migrations.AlterField(
            model_name="deadletter",
            name="message_id",
            field=models.UUIDField(unique=True),
        ),
    ]
