"""Service mode: Redis-stream workers, the clients' side of the stream, process supervision."""
