"""`python -m leaky_tokens.catalog`: run the API catalog (gateway reflection)."""

from leaky_tokens.catalog.bootstrap import ENV_PREFIX, CatalogSettings, build
from leaky_tokens.runtime.process import run_service

if __name__ == "__main__":
    run_service("catalog", CatalogSettings, ENV_PREFIX, build)
