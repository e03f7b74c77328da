from datetime import timedelta

import django.utils.timezone
from django.db import migrations, models
from django.db.models import F


def keep_the_old_bound(apps, schema_editor):
    # Keys in flight now were claimed by processes that do not renew a lease: they keep the
    # ten minutes after which such a key used to be taken over.
    IdempotencyKey = apps.get_model("jobs", "IdempotencyKey")
    IdempotencyKey.objects.filter(response_status__isnull=True).update(
        lease_until=F("created_at") + timedelta(minutes=10)
    )


class Migration(migrations.Migration):

    dependencies = [
        ('jobs', '0002_finish_seq'),
    ]

    operations = [
        migrations.AddField(
            model_name='idempotencykey',
            name='lease_until',
            field=models.DateTimeField(default=django.utils.timezone.now),
            preserve_default=False,
        ),
        migrations.RunPython(keep_the_old_bound, migrations.RunPython.noop),
    ]
