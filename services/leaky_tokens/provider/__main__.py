"""`python -m leaky_tokens.provider`: run the provider stubs."""

from leaky_tokens.provider.bootstrap import ENV_PREFIX, ProviderSettings, build
from leaky_tokens.runtime.process import run_service

if __name__ == "__main__":
    run_service("provider", ProviderSettings, ENV_PREFIX, build)
