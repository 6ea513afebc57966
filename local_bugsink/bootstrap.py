"""Runs inside the Bugsink environment, never imported by local_bugsink (which writes the settings module,
bugsink_conf.py, into the data folder). It reaches Bugsink's data only through Django's management commands
and ORM. Two entry points:

`python -P bootstrap.py` migrates both SQLite databases the settings name (Bugsink's own and snappea's task
queue), makes sure the admin user, the team and the project exist, and prints them as one JSON line.
Idempotent: on an existing data folder it only applies new migrations. The admin's password is left unusable.

`gunicorn --preload --config bootstrap.py bugsink.wsgi`: gunicorn's master runs `on_starting` below once it
has loaded Django, before it binds its port and forks the workers. It stores the credentials local_bugsink
chose for this run (environment variables below): the admin's password, a read-only API token for reading
events back, and the DSN key (a fresh one for a data folder copied from the template). Done in the server's
own process, a start stays at ~0.5 s; a Django process of its own would add about a second.
"""

import json
import os
import sys
import uuid

import django

ADMIN_USERNAME = "admin"
ADMIN_EMAIL = "admin@example.org"
TEAM_NAME = "local"
PROJECT_NAME = "local"
TOKEN_DESCRIPTION = "local_bugsink: reads events back"
# Set by local_bugsink for gunicorn; removed from the environment before the workers are forked.
PASSWORD_VARIABLE = "LOCAL_BUGSINK_ADMIN_PASSWORD"
API_TOKEN_VARIABLE = "LOCAL_BUGSINK_API_TOKEN"
SENTRY_KEY_VARIABLE = "LOCAL_BUGSINK_SENTRY_KEY"


def main() -> int:
    django.setup()
    from django.core.management import call_command
    from django.db import connections

    call_command("migrate", interactive=False, verbosity=0)
    call_command("migrate", "snappea", database="snappea", interactive=False, verbosity=0)

    # Bugsink's own apps are top-level packages of its environment; importable only after django.setup().
    from projects.models import Project, ProjectMembership, ProjectRole
    from teams.models import Team, TeamMembership, TeamRole
    from users.models import User

    admin = User.objects.filter(username=ADMIN_USERNAME).first()
    if admin is None:
        admin = User.objects.create_superuser(username=ADMIN_USERNAME, email=ADMIN_EMAIL, password=None)
    team, _ = Team.objects.get_or_create(name=TEAM_NAME)
    TeamMembership.objects.get_or_create(
        team=team, user=admin, defaults={"role": TeamRole.ADMIN, "accepted": True})
    project = Project.objects.filter(name=PROJECT_NAME, is_deleted=False).first()
    if project is None:
        # No alert e-mails: they would be rendered (and dropped) inside every ingest request.
        project = Project.objects.create(
            team=team, name=PROJECT_NAME,
            alert_on_new_issue=False, alert_on_regression=False, alert_on_unmute=False,
        )
    ProjectMembership.objects.get_or_create(
        project=project, user=admin, defaults={"role": ProjectRole.ADMIN, "accepted": True})

    print(json.dumps({
        "project_id": project.id,
        "sentry_key": project.sentry_key.hex,
        "admin_username": admin.username,
    }))
    # Closing the last connection folds SQLite's write-ahead log into the database file: local_bugsink copies
    # the file alone as the template.
    connections.close_all()
    return 0


def on_starting(server: object) -> None:
    """gunicorn's hook, in the master with Django loaded (--preload): this run's credentials."""
    from bsmain.models import AuthToken
    from django.contrib.auth.hashers import get_hasher
    from django.db import connections, transaction
    from projects.models import Project
    from users.models import User

    password = os.environ.pop(PASSWORD_VARIABLE)
    api_token = os.environ.pop(API_TOKEN_VARIABLE)
    sentry_key = os.environ.pop(SENTRY_KEY_VARIABLE)
    with transaction.atomic():
        admin = User.objects.get(username=ADMIN_USERNAME)
        # Django's own hasher at a tenth of its iterations: its default count takes 0.3-0.6 s here, longer
        # than the rest of a start. Django re-hashes with its default at the first log-in (must_update).
        hasher = get_hasher("pbkdf2_sha256")
        admin.password = hasher.encode(password, hasher.salt(), iterations=hasher.iterations // 10)
        admin.save(update_fields=["password"])
        project = Project.objects.get(name=PROJECT_NAME, is_deleted=False)
        project.sentry_key = uuid.UUID(sentry_key)
        project.save(update_fields=["sentry_key"])
        # One token per run; a kept data folder would otherwise collect them.
        AuthToken.objects.filter(description=TOKEN_DESCRIPTION).delete()
        AuthToken.objects.create(
            token=api_token, description=TOKEN_DESCRIPTION, is_project_bound=True, project=project,
            issues_read=True, events_read=True,
        )
    # The workers are forked from this process; each must open database connections of its own.
    connections.close_all()


if __name__ == "__main__":
    sys.exit(main())
