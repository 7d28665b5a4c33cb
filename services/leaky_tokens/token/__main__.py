"""`python -m leaky_tokens.token`: run the token service."""

from leaky_tokens.runtime.process import run_service
from leaky_tokens.token.bootstrap import ENV_PREFIX, TokenSettings, build

if __name__ == "__main__":
    run_service("token", TokenSettings, ENV_PREFIX, build)
