"""The auth service: users, roles, organizations, API keys and JWT signing keys."""
