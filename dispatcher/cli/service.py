"""Service commands: the request workers and the notification consumers."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from dispatcher.cli._app import agencies_options, console, load_agencies, main, out, read_policy


@main.command()
@click.option("--index", "index_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--redis-url", required=True, help="Redis holding the requests stream, the state and the queue.")
@click.option("--workers", default=2, type=click.IntRange(1),
              help="Worker processes (they share the memory-mapped index).")
@agencies_options
@click.option("--policy", "policy_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The request policy as JSON (limits by name, durations in seconds); default: the published one.")
@click.option("--auto-approve/--review", default=False, help="Dispatch valid requests at once, or wait for review.")
@click.option("--claim-idle-ms", default=30_000, type=click.IntRange(1),
              help="Reclaim a dead worker's entries after this idle time.")
@click.option("--feed-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Follow the camera change feed, with its snapshots in this directory (the first one is --index).")
@click.option("--snapshot-every", default=60.0, type=click.FloatRange(0),
              help="Seconds between snapshots of the changes (0: none).")
@click.option("--metrics-port", default=None, type=click.IntRange(0, 65535),
              help="Serve the workers' Prometheus metrics over HTTP on this port (/metrics); default: not served.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True,
              help="The address the metrics listen on: they are the operators', keep them off public interfaces.")
@click.option("--metrics-every", default=5.0, type=click.FloatRange(0), show_default=True,
              help="Seconds between each worker's reports to Redis (0: none).")
def serve(index_dir: Path, redis_url: str, workers: int, agencies: str | None, synthetic_agencies: int | None,
          policy_file: Path | None, auto_approve: bool, claim_idle_ms: int, feed_dir: Path | None,
          snapshot_every: float, metrics_port: int | None, metrics_host: str, metrics_every: float) -> None:
    """Serve requests from the Redis requests stream with a group of worker processes: validate, resolve,
    dispatch, acknowledge. SIGTERM or Ctrl-C stops them after the request in hand."""
    import tempfile

    from dispatcher.service.supervise import serve as run_workers
    from dispatcher.service.worker import ServiceSettings

    registry = load_agencies(agencies, synthetic_agencies)
    policy = read_policy(policy_file)
    policy["auto_approve"] = auto_approve or bool(policy.get("auto_approve"))
    with tempfile.TemporaryDirectory(prefix="geodispatch-serve-") as tmp:
        if agencies is None:  # the workers read the agencies from a file: write the generated ones to one
            agencies = str(Path(tmp) / "agencies.parquet")
            registry.save_parquet(agencies)
        run_workers(str(index_dir), redis_url, workers, agencies, policy,
                    ServiceSettings(claim_idle_ms=claim_idle_ms, feed_dir=None if feed_dir is None else str(feed_dir),
                                    snapshot_every_s=snapshot_every, metrics_every_s=metrics_every), out.print,
                    logging.getLevelName(logging.getLogger().level),
                    metrics=None if metrics_port is None else (metrics_host, metrics_port))


@main.command()
@click.option("--redis-url", required=True, help="Redis the workers report to.")
@click.option("--group", default="workers", show_default=True, help="The workers' consumer group.")
def metrics(redis_url: str, group: str) -> None:
    """Print the workers' metrics once, in Prometheus's text format: each worker's commands by outcome, batch
    times and index version, the change feed's lag and the commands waiting (for a textfile collector, or a look).
    A Redis that does not answer is an error (``serve --metrics-port`` says ``geodispatch_redis_up 0`` instead)."""
    from dispatcher.connections import connect
    from dispatcher.dispatch.settings import QueueSettings
    from dispatcher.service.metrics import collect, render

    qs = QueueSettings.from_url(redis_url)
    click.echo(render(collect(connect(qs), qs.keys, qs, group)).decode(), nl=False)


@main.command()
@click.option("--redis-url", required=True, help="Redis holding the change feed.")
@click.option("--file", "changes_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Changes as JSON lines: {\"op\": \"remove\", \"camera_ids\": [...]}, sharing, optout, add.")
def changes(redis_url: str, changes_file: Path) -> None:
    """Publish camera registry changes to the feed every serve worker applies; all of them or, when one is
    malformed, none."""
    import redis

    from dispatcher.connections import connect
    from dispatcher.dispatch.settings import QueueSettings
    from dispatcher.errors import InvalidChange, QueueUnavailable
    from dispatcher.service.feed import parse_change, publish_changes

    parsed = []
    for k, line in enumerate(changes_file.read_bytes().splitlines(), 1):
        if line.strip():
            try:
                parsed.append(parse_change(line))
            except InvalidChange as exc:
                raise InvalidChange(f"{changes_file}:{k}: {exc}") from None
    qs = QueueSettings.from_url(redis_url)
    try:
        got = publish_changes(connect(qs), parsed, qs.keys)
    except (redis.ConnectionError, redis.TimeoutError) as exc:  # not retried: the append may have been made
        raise QueueUnavailable(f"Redis at {qs.where}: {exc}; nothing is known to be published") from None
    out.print(f"published {len(got)} changes" + (f", positions {got[0]}..{got[-1]}" if got else ""))


@main.command()
@click.option("--redis-url", required=True, help="Redis holding the notifications stream and the address book.")
@click.option("--outbox", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Write the e-mails to this directory, one file per notification, instead of sending them.")
@click.option("--smtp-host", default=None, help="Send e-mail through this SMTP relay (login from "
              "GEODISPATCH_SMTP_USER and GEODISPATCH_SMTP_PASSWORD).")
@click.option("--smtp-port", default=587, type=click.IntRange(1, 65535), help="The relay's port.")
@click.option("--smtp-security", default="starttls", type=click.Choice(["starttls", "ssl", "none"]),
              help="TLS with the relay: STARTTLS, TLS from the start, or none (a relay on loopback).")
@click.option("--smtp-from", default="requests@geodispatch.example", help="The From address.")
@click.option("--push/--no-push", default=True, help="Also POST to residents' push webhooks (with --smtp-host).")
@click.option("--link-base-url", default=None, help="Public base URL of the resident pages (the API's /r); "
              "the signing secret is GEODISPATCH_LINK_SECRET.")
@click.option("--link-max-age-s", default=None, type=int, help="How long a link stays valid [default: 14 days].")
@click.option("--consumers", default=2, type=click.IntRange(1), help="Consumer threads of the group.")
@click.option("--group", default="senders", help="The consumer group.")
@click.option("--claim-idle-ms", default=30_000, type=click.IntRange(1),
              help="Reclaim a dead consumer's entries after this idle time.")
@click.option("--trim-every-s", default=60.0, type=click.FloatRange(min=0, min_open=True),
              help="Trim the notifications every group has acknowledged this often (never one still pending).")
@click.option("--metrics-every", default=5.0, type=click.FloatRange(0), show_default=True,
              help="Seconds between each consumer's reports to Redis, served by `serve --metrics-port` (0: none).")
def consume(redis_url: str, outbox: Path | None, smtp_host: str | None, smtp_port: int, smtp_security: str,
            smtp_from: str, push: bool, link_base_url: str | None, link_max_age_s: int | None, consumers: int,
            group: str, claim_idle_ms: int, trim_every_s: float, metrics_every: float) -> None:
    """Send the notifications on the stream: a consumer group renders each owner's e-mail with signed links,
    sends it once (idempotency keys) by SMTP and push to the address book's addresses, or into an outbox, and
    acknowledges. SIGTERM or Ctrl-C stops it after the batches in hand."""
    from dispatcher.connections import connect
    from dispatcher.dispatch.addresses import RedisAddressBook
    from dispatcher.dispatch.consumer import OutboxSender
    from dispatcher.dispatch.delivery import DeliverySender, SmtpSender, SmtpSettings, WebhookSender
    from dispatcher.dispatch.links import LinkSettings, LinkSigner
    from dispatcher.dispatch.settings import QueueSettings
    from dispatcher.service.supervise import consume as run_consumers

    if (outbox is None) == (smtp_host is None):
        raise click.UsageError("give --outbox DIR or --smtp-host HOST (one of the two)")
    links = LinkSigner(LinkSettings.from_env(base_url=link_base_url, max_age_s=link_max_age_s))
    if outbox is not None:
        run_consumers(redis_url, OutboxSender(outbox), links, consumers, group, claim_idle_ms, out.print,
                      trim_every_s=trim_every_s, metrics_every_s=metrics_every)
        return
    qs = QueueSettings.from_url(redis_url)
    smtp = SmtpSettings.from_env(host=smtp_host, port=smtp_port, security=smtp_security, from_addr=smtp_from)
    sender = DeliverySender(RedisAddressBook(connect(qs), qs), SmtpSender(smtp, qs),
                            WebhookSender(qs) if push else None)
    try:
        run_consumers(redis_url, sender, links, consumers, group, claim_idle_ms, out.print, trim_every_s=trim_every_s,
                      metrics_every_s=metrics_every)
    finally:
        sender.close()


@main.command("migrate-gate")
@click.option("--redis-url", required=True, help="Redis holding the gate's records (queue settings in the query).")
@click.option("--policy", "policy_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The request policy as JSON (its owner_cap_period says which notices still count); default: the "
                   "published one.")
def migrate_gate(redis_url: str, policy_file: Path | None) -> None:
    """Count the owners' notices kept by the gate before the day counters (a sorted set per owner) into the day
    counters, and delete the sorted sets, so the cap holds across the upgrade. Run it once the old workers are
    stopped, before the new ones send; run again, it counts nothing twice."""
    import redis

    from dispatcher.connections import connect
    from dispatcher.dispatch.gate import migrate_legacy_notices
    from dispatcher.dispatch.settings import QueueSettings
    from dispatcher.errors import QueueUnavailable
    from dispatcher.workflow.policy import Policy

    policy = Policy.from_dict(read_policy(policy_file), source=str(policy_file or "the published policy"))
    qs = QueueSettings.from_url(redis_url)
    try:
        done = migrate_legacy_notices(connect(qs), qs, policy)
    except (redis.ConnectionError, redis.TimeoutError) as exc:  # each owner is whole: run it again
        raise QueueUnavailable(f"Redis at {qs.where}: {exc}; run migrate-gate again to finish") from None
    out.print(f"{done.owners} owners' sorted sets counted into the day counters ({done.notices} notices the cap "
              f"still counts) and deleted")
    for key in done.skipped:
        console.print(f"left as it is (not in its owner's shard, or not an owner's): {key}")


@main.group()
def addresses() -> None:
    """The residents' address book the senders read (e-mail addresses and push URLs, never on the stream)."""


@addresses.command("load")
@click.option("--redis-url", required=True, help="Redis holding the address book.")
@click.option("--owners", "owners_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Parquet owners table with owner_id and the optional email and push_url columns.")
def load_addresses(redis_url: str, owners_file: Path) -> None:
    """Add or replace the owners' addresses from an owners table (all or none: a bad one stops the load)."""
    import pyarrow.parquet as pq

    from dispatcher.connections import connect
    from dispatcher.dispatch.addresses import RedisAddressBook, addresses_from_owners
    from dispatcher.dispatch.settings import QueueSettings

    book = addresses_from_owners(pq.read_table(owners_file))
    qs = QueueSettings.from_url(redis_url)
    RedisAddressBook(connect(qs), qs).put_many(book)
    out.print(f"{len(book)} addresses loaded")
