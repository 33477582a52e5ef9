"""`skulens privacy purge|new-key|decrypt`, and `skulens serve`'s opt-in storage flags."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from skulens.cli.options import EXIT_OK, add_json
from skulens.errors import SkulensError


def add_parsers(sub) -> None:
    pv = sub.add_parser("privacy", help="stored uploads: retention purge (cron-able), storage key, decrypt")
    psub = pv.add_subparsers(dest="privacy_command", required=True)
    pg = psub.add_parser(
        "purge",
        help="delete stored uploads older than N days (run it from cron)",
        description="Delete uploads stored by `skulens serve --store-uploads DIR` that are older "
        "than N days; only files skulens named are touched. Example crontab line: "
        "17 3 * * * skulens privacy purge --dir /var/lib/skulens/uploads "
        "--older-than-days 30",
    )
    pg.add_argument("--dir", required=True, help="the --store-uploads folder")
    pg.add_argument("--older-than-days", type=float, required=True, help="retention period in days")
    pg.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")
    add_json(pg)
    pg.set_defaults(handler=cmd_privacy_purge)
    nk = psub.add_parser("new-key", help="print a new key for SKULENS_STORAGE_KEY (serve --encrypt-at-rest)")
    nk.set_defaults(handler=cmd_privacy_new_key)
    dc = psub.add_parser("decrypt", help="decrypt one stored upload (key from SKULENS_STORAGE_KEY)")
    dc.add_argument("file", help="a stored .jpg.enc file")
    dc.add_argument("--out", required=True, help="where to write the JPEG")
    dc.set_defaults(handler=cmd_privacy_decrypt)


def add_serve_storage_args(sv) -> None:
    """`skulens serve`'s opt-in storage flags."""
    g = sv.add_argument_group("storing uploads (off by default: photos are answered in memory and dropped)")
    g.add_argument(
        "--store-uploads",
        metavar="DIR",
        default=None,
        help="keep each uploaded photo in DIR, re-encoded without metadata (EXIF, GPS, XMP, IPTC)",
    )
    g.add_argument("--blur-faces", action="store_true", help="pixelate faces before storing (OpenCV Haar cascades)")
    g.add_argument(
        "--encrypt-at-rest",
        action="store_true",
        help="encrypt stored photos (AES-256-GCM) with the key in $SKULENS_STORAGE_KEY",
    )
    g.add_argument(
        "--retention-days",
        type=float,
        default=None,
        help="delete stored photos after N days (the server purges hourly; cron: skulens privacy purge)",
    )


def serve_storage_settings(args: argparse.Namespace) -> dict:
    """The ServeConfig fields for those flags."""
    return {
        "store_uploads_dir": Path(args.store_uploads) if args.store_uploads else None,
        "blur_faces": args.blur_faces,
        "encrypt_at_rest": args.encrypt_at_rest,
        "retention_days": args.retention_days,
    }


def cmd_privacy_new_key(args: argparse.Namespace) -> int:
    import sys

    from skulens.privacy import crypto

    print(crypto.new_key())
    print(
        f"Keep it secret and set it as {crypto.KEY_ENV} for `skulens serve --encrypt-at-rest`; "
        "files stored with it cannot be read without it.",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_privacy_decrypt(args: argparse.Namespace) -> int:
    from skulens.privacy import crypto
    from skulens.privacy.store import read_stored

    out = Path(args.out)
    if out.exists() and out.samefile(args.file):
        raise SkulensError("--out must not be the encrypted file itself")
    out.write_bytes(read_stored(args.file, crypto.key_from_env()))
    print(f"wrote {out}")
    return EXIT_OK


def cmd_privacy_purge(args: argparse.Namespace) -> int:
    from skulens.privacy.store import purge

    result = purge(args.dir, args.older_than_days, dry_run=args.dry_run)
    if args.json:
        print(json.dumps({**result.to_dict(), "dry_run": args.dry_run}))
    else:
        verb = "would remove" if args.dry_run else "removed"
        print(
            f"{verb} {result.removed} stored upload(s) ({result.bytes:,} bytes) older than "
            f"{args.older_than_days:g} days; {result.kept} kept"
        )
    return EXIT_OK
