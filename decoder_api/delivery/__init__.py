"""Delivery of finals to Kafka: events built from finals, the outbox that keeps them until the
broker acknowledges, the publisher, and the partition a call is pinned to."""
