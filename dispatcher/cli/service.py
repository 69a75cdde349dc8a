"""Service commands: the request workers and the notification consumers."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from dispatcher.cli._app import agencies_options, load_agencies, main, out, read_policy


@main.command()
@click.option("--index", "index_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--redis-url", required=True, help="Redis holding the requests stream, the state and the queue.")
@click.option("--workers", default=2, help="Worker processes (they share the memory-mapped index).")
@agencies_options
@click.option("--policy", "policy_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The request policy as JSON (limits by name, durations in seconds); default: the published one.")
@click.option("--auto-approve/--review", default=False, help="Dispatch valid requests at once, or wait for review.")
@click.option("--claim-idle-ms", default=30_000, help="Reclaim a dead worker's entries after this idle time.")
def serve(index_dir: Path, redis_url: str, workers: int, agencies: str | None, synthetic_agencies: int | None,
          policy_file: Path | None, auto_approve: bool, claim_idle_ms: int) -> None:
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
                    ServiceSettings(claim_idle_ms=claim_idle_ms), out.print,
                    logging.getLevelName(logging.getLogger().level))


@main.command()
@click.option("--redis-url", required=True, help="Redis holding the notifications stream.")
@click.option("--outbox", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory the e-mails are written to, one file per notification.")
@click.option("--consumers", default=2, help="Consumer threads of the group.")
@click.option("--group", default="senders", help="The consumer group.")
@click.option("--claim-idle-ms", default=30_000, help="Reclaim a dead consumer's entries after this idle time.")
def consume(redis_url: str, outbox: Path, consumers: int, group: str, claim_idle_ms: int) -> None:
    """Send the notifications on the stream: a consumer group renders each owner's e-mail, sends it once
    (idempotency keys) and acknowledges. SIGTERM or Ctrl-C stops it after the batches in hand."""
    from dispatcher.service.supervise import consume as run_consumers

    run_consumers(redis_url, str(outbox), consumers, group, claim_idle_ms, out.print)

