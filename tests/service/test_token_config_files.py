"""The token service's config files are read by an adapter and named in every error."""

from __future__ import annotations

from pathlib import Path

import pytest

from leaky_tokens.token.adapters.config_files import load_policy
from leaky_tokens.token.domain.policy_parse import PolicyError

MINIMAL = "providers:\n  openai: {capacity: 2000, leak_rate: 20}\n"


def test_load_policy_reads_a_file_and_names_it_in_errors(tmp_path: Path) -> None:
    good = tmp_path / "policy.yaml"
    good.write_text(MINIMAL, encoding="utf-8")
    assert load_policy(good).source == str(good)
    bad = tmp_path / "bad.yaml"
    bad.write_text(MINIMAL + "limits: {}\n", encoding="utf-8")
    with pytest.raises(PolicyError, match=rf"^{bad}:3: policy: unknown key 'limits'"):
        load_policy(bad)
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path / "missing.yaml")
