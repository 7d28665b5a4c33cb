"""`python -m leaky_tokens.auth`: run the auth service."""

from leaky_tokens.auth.bootstrap import ENV_PREFIX, AuthSettings, build
from leaky_tokens.runtime.process import run_service

if __name__ == "__main__":
    run_service("auth", AuthSettings, ENV_PREFIX, build)
