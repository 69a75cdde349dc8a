"""The HTTP front door's commands: ``api`` serves it, ``api-key`` creates, lists and revokes its keys."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from dispatcher.cli._app import OutputFile, agencies_options, load_agencies, main, out, read_policy

_DEFAULT_STORE = Path("geodispatch.sqlite")


def _backend_options(f: Any) -> Any:
    f = click.option("--redis-url", default=None, help="Redis holding the state, the notifications and the keys "
                     "(instead of the embedded file).")(f)
    return click.option("--store", type=OutputFile(), default=None,
                        help=f"The embedded SQLite file: state, notifications and keys [default: {_DEFAULT_STORE}]."
                        )(f)


def _where(store: Path | None, redis_url: str | None, *, existing: bool = False) -> dict[str, Any]:
    """The backend's place; ``existing``: for a command that only reads or changes keys, a file that is not there
    is a mistyped path, not a store to create."""
    if store is not None and redis_url is not None:
        raise click.UsageError("give --store or --redis-url, not both")
    if redis_url is not None:
        return {"redis_url": redis_url}
    path = store or _DEFAULT_STORE
    if existing and not path.is_file():
        raise click.UsageError(f"{path}: no such store (api-key create makes it, or give --redis-url)")
    return {"store": path}


@main.command()
@click.option("--index", "index_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@_backend_options
@agencies_options
@click.option("--policy", "policy_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The request policy as JSON (limits by name, durations in seconds); default: the published one.")
@click.option("--host", default="127.0.0.1", help="Address to listen on.")
@click.option("--port", default=8080, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--link-base-url", default=None, help="Public base URL of the resident pages (this server's /r); "
              "they are served when GEODISPATCH_LINK_SECRET is set.")
@click.option("--link-max-age-s", default=None, type=int, help="How long a link stays valid [default: 14 days].")
@click.option("--rate-limit", default="600/minute", show_default=True,
              help="Calls an API key may make (counted on the Redis of --redis-url, else in this process).")
@click.option("--address-rate-limit", default="120/minute", show_default=True,
              help="Calls a client address may make without a valid key (wrong keys, the resident pages).")
def api(index_dir: Path, store: Path | None, redis_url: str | None, agencies: str | None,
        synthetic_agencies: int | None, policy_file: Path | None, host: str, port: int, link_base_url: str | None,
        link_max_age_s: int | None, rate_limit: str, address_rate_limit: str) -> None:
    """Serve the HTTP API: agencies submit and follow their requests, reviewers approve or reject them, with
    keys made by ``api-key create``. SIGTERM or Ctrl-C stops it after the calls in hand."""
    import os

    from dispatcher.api import ApiSettings, ResidentPages, open_backend, serve
    from dispatcher.dispatch.links import LinkSettings, LinkSigner
    from dispatcher.workflow.policy import Policy

    settings = ApiSettings(rate_limit=rate_limit, address_rate_limit=address_rate_limit,
                           rate_storage=redis_url or "memory://")
    residents = None
    if os.environ.get("GEODISPATCH_LINK_SECRET"):
        residents = ResidentPages(LinkSigner(LinkSettings.from_env(base_url=link_base_url,
                                                                   max_age_s=link_max_age_s)))
    registry = load_agencies(agencies, synthetic_agencies)
    backend = open_backend(index_dir, registry, Policy.from_dict(read_policy(policy_file)),
                           **_where(store, redis_url))
    serve(backend, host, port, settings, residents=residents)


@main.group("api-key")
def api_key() -> None:
    """The HTTP API's keys: stored only as digests; each agency or reviewer may hold two active keys (rotation)."""


@api_key.command("create")
@_backend_options
@click.option("--agency", default=None, help="The agency the key is for.")
@click.option("--reviewer", default=None, help="The reviewer the key is for.")
def create_key(store: Path | None, redis_url: str | None, agency: str | None, reviewer: str | None) -> None:
    """Create a key and print it, once: it is not kept, only its digest."""
    from dispatcher.api import open_credentials
    from dispatcher.api.credentials import AGENCY, REVIEWER

    if (agency is None) == (reviewer is None):
        raise click.UsageError("give --agency ID or --reviewer NAME")
    role, name = (AGENCY, agency) if agency is not None else (REVIEWER, reviewer)
    key_id, key = open_credentials(**_where(store, redis_url)).create(role, str(name), datetime.now(timezone.utc))
    click.echo(f"key id {key_id} for {role} {name}; the key (shown only now):", err=True)
    click.echo(key)


@api_key.command("revoke")
@_backend_options
@click.option("--key-id", required=True, help="The id printed when the key was created (or by api-key list).")
def revoke_key(store: Path | None, redis_url: str | None, key_id: str) -> None:
    """Revoke a key: it never authenticates again."""
    from dispatcher.api import open_credentials

    rec = open_credentials(**_where(store, redis_url, existing=True)).revoke(key_id, datetime.now(timezone.utc))
    out.print(f"revoked key {rec.key_id} of {rec.role} {rec.name}", highlight=False, markup=False)


@api_key.command("list")
@_backend_options
def list_keys(store: Path | None, redis_url: str | None) -> None:
    """Every key's id, principal and times (never the key)."""
    from dispatcher.api import open_credentials

    for rec in open_credentials(**_where(store, redis_url, existing=True)).records():
        state = "active" if rec.active else f"revoked {_time(rec.revoked_s)}"
        out.print(f"{rec.key_id}  {rec.role:<8}  {rec.name:<24}  created {_time(rec.created_s)}  {state}",
                  highlight=False, markup=False, soft_wrap=True)  # a key a line, whatever the width


def _time(s: int) -> str:
    return datetime.fromtimestamp(s, tz=timezone.utc).isoformat(timespec="seconds")
