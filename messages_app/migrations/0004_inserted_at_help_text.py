"""inserted_at's help text says what the worker stores there: no change to the table."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("messages_app", "0003_deadletter_message_id_unique")]

    operations = [
        migrations.AlterField(
            model_name="message",
            name="inserted_at",
            field=models.DateTimeField(
                help_text="When the worker's transaction stored the message: its start, or the message's "
                "receipt where that came later (a job taken in while the transaction ran)."
            ),
        ),
    ]
