"""The generation service: jobs, the provider pipeline, templates, moderation.

The broker-free building blocks live in plain modules so they can be tested
without RabbitMQ: ``providers/`` (the adapter interface, the adapters and the
router with retries, circuit breakers and failover), ``templates/`` (the
deterministic template engine and its data files), ``moderation``,
``prompt_assist`` and ``webhooks``. See docs/generation.md.
"""
