"""Dispatch: the wire format, the send-time gate, the exactly-once dispatcher, sinks and the consumer."""
