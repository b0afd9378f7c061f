"""Walk the whole MODEL_FOR_CAUSAL_LM_MAPPING (meta device) and hold the patcher to it."""

import pytest

from helpers import ARCHITECTURES, load_script

pytestmark = pytest.mark.slow  # walks every architecture of the installed transformers

coverage = load_script("scripts/patch_coverage.py")
architecture_coverage, summarise = coverage.architecture_coverage, coverage.summarise

# Architectures whose blocks have no activation *module* in a feed-forward block.
NO_FEED_FORWARD_MODULE = {"mamba", "mamba2", "falcon_mamba", "rwkv", "gpt_oss", "lfm2"}


@pytest.fixture(scope="module")
def outcomes():
    return {o.model_type: o for o in architecture_coverage()}


def test_covers_nearly_every_buildable_architecture(outcomes):
    print("\n" + summarise(list(outcomes.values())))
    buildable = [o for o in outcomes.values() if o.status != "build-failed"]
    patched = [o for o in buildable if o.status == "patched"]
    assert len(buildable) >= 100
    assert len(patched) / len(buildable) >= 0.9
    assert not [o.model_type for o in buildable if o.status == "patch-failed"]


def test_named_families_are_patched(outcomes):
    for model_type in ARCHITECTURES:
        assert outcomes[model_type].status == "patched", outcomes[model_type].detail


def test_models_without_a_feed_forward_activation_get_the_clear_error(outcomes):
    for model_type in NO_FEED_FORWARD_MODULE & set(outcomes):
        assert outcomes[model_type].status == "no-activation", model_type
        assert "no activation module in a feed-forward block" in outcomes[model_type].detail
