"""Fakes of third-party services, shared by unit, integration and e2e tests."""
