"""`python -m leaky_tokens.analytics`: run the analytics service."""

from leaky_tokens.analytics.bootstrap import ENV_PREFIX, AnalyticsSettings, build
from leaky_tokens.runtime.process import run_service

if __name__ == "__main__":
    run_service("analytics", AnalyticsSettings, ENV_PREFIX, build)
