import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Importing prefect sets up its logging once per process, binding its console handler to
# the sys.stderr of that moment. Imported here (before any test), that is the session's
# capture stream; imported first inside a test that captures output (capsys, an in-process
# `semisynth run`), it would be that test's stream, closed after it, and every later flow's
# log line would fail.
import prefect  # noqa: E402, F401

REPO = Path(__file__).resolve().parents[1]
# The prior and the Brown Corpus are fetched once and cached here (never committed).
ASSETS = Path(os.environ.get("SEMISYNTH_TEST_ASSETS", REPO / "var" / "test-assets"))


# Fixtures that load the real prior, fetch the corpus or start a Prefect server: a test
# that uses any of them (directly or through another fixture) is slow, whatever its file.
SLOW_FIXTURES = {"prior_folder", "prior_f32", "official_f32", "brown_shards", "prefect_server"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def assets_root() -> Path:
    ASSETS.mkdir(parents=True, exist_ok=True)
    return ASSETS


@pytest.fixture(scope="session")
def prior_folder(assets_root) -> Path:
    """The default prior converted to safetensors (once; later sessions reuse it)."""
    from semisynth.tasks.prior import fetch_default_prior

    return fetch_default_prior(assets_root)


@pytest.fixture(scope="session")
def prior_f32(assets_root):
    from semisynth.tasks.prior import load_prior

    return load_prior("default", assets_root, "float32")


@pytest.fixture(scope="session")
def official_f32(prior_folder):
    """The default prior as transformers builds it (float32): the reference for
    tasks/llama.py's forward, and for what only transformers' model does (``generate``)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(prior_folder, dtype="float32").eval()


@pytest.fixture(scope="session")
def brown_shards(assets_root):
    from semisynth.tasks.assets import fetch_brown

    return fetch_brown(assets_root)


@pytest.fixture(scope="session")
def prefect_server():
    """One real (ephemeral, local) Prefect server for the whole test session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
