"""`python -m leaky_tokens.catalog`: run the API catalog (gateway reflection)."""

from leaky_tokens.catalog.bootstrap import ENV_PREFIX, CatalogSettings, build
from leaky_tokens.runtime.process import run_service

if __name__ == "__main__":
    # Stateless (reflection and health only): any number of processes may share its port.
    run_service("catalog", CatalogSettings, ENV_PREFIX, build, single_process_reason=lambda _: "")
