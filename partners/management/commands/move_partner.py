"""`python manage.py move_partner CODE --to-url URL`: move a partner's data online (partners/moves.py)."""

from django.core.management.base import BaseCommand, CommandError, CommandParser

from partners.moves import PartnerMoveFailed, PartnerMoveRefused, partner_move


class Command(BaseCommand):
    help = (
        "Move a partner's data to another PostgreSQL location (a database of its own, or a schema of a "
        "shared database: ?schema=NAME) while it keeps receiving postbacks, then switch the partner to it. "
        "The old location is kept, fenced against writes, for you to remove."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("partner_code")
        parser.add_argument(
            "--to-url",
            required=True,
            help="where to: postgres://.../db (a database of its own) or postgres://.../db?schema=NAME; "
            "the shared PARTNER_DATABASE_URL itself means the partner's schema in it",
        )
        parser.add_argument("--batch-size", type=int, default=5000, help="rows per copied batch (default 5000)")

    def handle(self, *args, **options) -> None:
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        try:
            partner_move(
                partner_code=options["partner_code"],
                to_url=options["to_url"],
                batch_size=options["batch_size"],
                say=self.stdout.write,
            )
        except PartnerMoveRefused as exc:
            raise CommandError(f"not moved: {exc}") from exc
        except PartnerMoveFailed as exc:
            raise CommandError(str(exc)) from exc
