"""Testing helpers for piko_trio_events users: a real nats-server launcher, and more."""
