"""Runs inside the Bugsink environment, never imported by local_bugsink: `python -P bootstrap.py` with
DJANGO_SETTINGS_MODULE=bugsink_conf importable (local_bugsink writes that file into the data folder).

Migrates both SQLite databases the settings name (Bugsink's own and snappea's task queue), then makes sure the
admin user, the team and the project exist, and prints them as one JSON line. Idempotent: on an existing data
folder it only applies new migrations. The admin's password is left unusable here; local_bugsink sets it.
"""

import json
import sys

import django

ADMIN_USERNAME = "admin"
ADMIN_EMAIL = "admin@example.org"
TEAM_NAME = "local"
PROJECT_NAME = "local"


def main() -> int:
    django.setup()
    from django.core.management import call_command

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
