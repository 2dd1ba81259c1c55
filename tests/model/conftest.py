"""Model tests use the shared tiny dataset fixtures from tests/conftest.py."""
