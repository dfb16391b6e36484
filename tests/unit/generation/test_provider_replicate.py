"""The replicate adapter without a network: its config, exactly what it would
send, and how it reads a prediction (status, outputs, errors)."""

from __future__ import annotations

import base64

import pytest

from services.generation.providers.base import (
    CONTENT_REFUSED,
    PermanentProviderError,
    ProviderRequest,
    TransientProviderError,
)
from services.generation.providers.replicate import ReplicateProvider
from services.generation.providers.router import ProviderConfigError, build_provider
from tests.fakes.providers import png_bytes

CONF = {"type": "replicate", "api_key": "r8_test", "model": "black-forest-labs/flux-schnell",
        "region": "us", "max_concurrency": 4, "enabled": True, "allow_private_network": False,
        "inputs": {"prompt": "prompt", "seed": "seed", "n": "num_outputs",
                   "aspect_ratio": "aspect_ratio"}}


def provider(**changes) -> ReplicateProvider:
    conf = {**CONF, **changes}
    return build_provider("flux", {k: v for k, v in conf.items() if v is not None})


def request(**kw) -> ProviderRequest:
    return ProviderRequest(**{"job_type": "text-to-image", "prompt": "a teapot", **kw})


# ------------------------------------------------------------------ config


def test_the_issue_example_config_builds_a_provider_on_replicates_documented_base():
    flux = provider(inputs={"prompt": "prompt", "seed": "seed", "n": "num_outputs",
                            "width": "width", "height": "height"})
    assert flux.http.base_url == "https://api.replicate.com/v1"
    assert flux.create_path == "/models/black-forest-labs/flux-schnell/predictions"
    assert flux.version is None
    assert flux.job_types == frozenset({"text-to-image"})
    assert flux.wait_s == 60


def test_a_versioned_model_or_a_version_creates_through_the_predictions_endpoint():
    by_model = provider(model="stability-ai/sdxl:39ed52f2a78e")
    by_version = provider(model=None, version="39ed52f2a78e")
    for flux in (by_model, by_version):
        assert flux.create_path == "/predictions"
        assert flux.payload(request())["version"] == "39ed52f2a78e"


def test_a_deployment_creates_through_its_own_endpoint():
    flux = provider(model=None, deployment="acme/flux-house")
    assert flux.create_path == "/deployments/acme/flux-house/predictions"
    assert "version" not in flux.payload(request())


@pytest.mark.parametrize("changes, key", [
    ({"api_key": None}, "api_key"),
    ({"model": None}, "model"),
    ({"version": "abc"}, "model"),
    ({"model": "just-a-name"}, "model"),
    ({"deployment": "acme/flux"}, "model"),
    ({"model": None, "deployment": "acme/flux:abc"}, "deployment"),
    ({"model": None, "version": "a b"}, "version"),
    ({"inputs": {"user_id": "user"}}, "inputs.user_id"),
    ({"inputs": {"prompt": ""}}, "inputs.prompt"),
    ({"inputs": {"prompt": "text", "negative_prompt": "text"}}, "inputs"),
    ({"inputs": []}, "inputs"),
    ({"job_types": ["image-to-image"]}, "inputs.image"),
    ({"job_types": ["text-to-music"]}, "job_types"),
    ({"fixed_inputs": {"seed": 1}}, "fixed_inputs.seed"),
    ({"fixed_inputs": ["x"]}, "fixed_inputs"),
    ({"wait_s": 61}, "wait_s"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"timeout_s": "soon"}, "timeout_s"),
    ({"wait_s": "x"}, "wait_s"),
    ({"wait_s": -1}, "wait_s"),
    ({"max_download_bytes": 0}, "max_download_bytes"),
    ({"task_timeout_s": -1}, "task_timeout_s"),
    ({"poll_interval_s": 0}, "poll_interval_s"),
    ({"max_poll_errors": -1}, "max_poll_errors"),
    ({"base_url": "ftp://example.com"}, "base_url"),
])
def test_a_bad_config_stops_the_service_naming_the_key(changes, key):
    with pytest.raises(ProviderConfigError) as caught:
        provider(**changes)
    assert str(caught.value).lower().startswith("providers.flux: ")
    assert key in str(caught.value)


def test_the_wait_never_outlasts_our_own_read_timeout():
    assert provider(timeout_s=30).wait_s == 24
    assert provider(timeout_s=1).wait_s == 0
    assert provider(wait_s=0).wait_s == 0
    assert provider(task_timeout_s=10).wait_s == 10


def test_without_inputs_only_the_prompt_is_sent():
    flux = provider(inputs=None)
    assert flux.payload(request(seed=3, width=64, height=64, negative_prompt="x")) == \
        {"input": {"prompt": "a teapot"}}


# ------------------------------------------------------------------ what is sent


def test_only_mapped_fields_are_sent_under_the_models_input_names():
    flux = provider()
    body = flux.payload(request(seed=7, n=2, width=1024, height=768, negative_prompt="blurry"))
    assert body == {"input": {"prompt": "a teapot", "seed": 7, "num_outputs": 2,
                              "aspect_ratio": "4:3"}}


def test_absent_values_are_left_out_and_fixed_inputs_are_added():
    flux = provider(fixed_inputs={"output_format": "png", "go_fast": True})
    assert flux.payload(request()) == {"input": {"prompt": "a teapot", "num_outputs": 1,
                                                 "output_format": "png", "go_fast": True}}


def test_every_darkroom_field_can_be_mapped():
    inputs = {f: f"in_{f}" for f in ("prompt", "negative_prompt", "seed", "n", "width",
                                     "height", "size", "aspect_ratio", "strength",
                                     "duration_s", "image")}
    flux = provider(inputs=inputs, job_types=["image-to-image"])
    source = png_bytes(8, 8)
    body = flux.payload(ProviderRequest("image-to-image", "p", negative_prompt="n", n=2,
                                        width=640, height=480, seed=1, strength=0.4,
                                        source_image=source, source_content_type="image/png",
                                        duration_s=3.0))
    assert body == {"input": {
        "in_prompt": "p", "in_negative_prompt": "n", "in_seed": 1, "in_n": 2, "in_width": 640,
        "in_height": 480, "in_size": "640x480", "in_aspect_ratio": "4:3", "in_strength": 0.4,
        "in_duration_s": 3.0,
        "in_image": "data:image/png;base64," + base64.b64encode(source).decode()}}


def test_without_an_n_mapping_each_prediction_gets_its_own_seed():
    flux = provider(inputs={"prompt": "prompt", "seed": "seed"})
    assert [flux.payload(request(seed=5, n=3), i)["input"]["seed"] for i in range(3)] == [5, 6, 7]
    with_n = provider()
    assert with_n.payload(request(seed=5, n=3), 2)["input"]["seed"] == 5


# ------------------------------------------------------------------ reading predictions


@pytest.mark.parametrize("error, kind, code", [
    ("The input or output was flagged as sensitive. Please try again with different "
     "inputs. (E005)", PermanentProviderError, CONTENT_REFUSED),
    ("NSFW content detected. Try running it again, or try a different prompt.",
     PermanentProviderError, CONTENT_REFUSED),
    ("E1001: Model out of memory", PermanentProviderError, "provider_rejected_request"),
    ("E1000: Unknown error", TransientProviderError, "provider_task_failed"),
    ("CUDA error: connection refused by worker", TransientProviderError,
     "provider_task_failed"),
    (None, TransientProviderError, "provider_task_failed"),
])
def test_a_failed_prediction_is_classified_by_its_error(error, kind, code):
    failure = provider()._failure(error)
    assert type(failure) is kind and failure.code == code


def test_a_failure_keeps_the_error_code_never_the_models_text():
    failure = provider()._failure("E1000: could not render 'a secret prompt'")
    assert "E1000" in failure.message and "secret" not in failure.message


@pytest.mark.parametrize("output, urls", [
    ("https://replicate.delivery/x/out.png", ["https://replicate.delivery/x/out.png"]),
    (["https://a/1.webp", "https://a/2.webp"], ["https://a/1.webp", "https://a/2.webp"]),
])
def test_output_is_a_url_or_a_list_of_urls(output, urls):
    assert provider()._output_urls({"output": output}) == urls


@pytest.mark.parametrize("output", [None, {"image": "https://a/1.png"}, [1], [""]])
def test_an_output_that_is_not_urls_is_a_malformed_answer(output):
    with pytest.raises(TransientProviderError) as caught:
        provider()._output_urls({"output": output})
    assert caught.value.code == "invalid_provider_output"


def test_data_uri_outputs_are_decoded_and_checked():
    flux = provider()
    png = png_bytes(8, 8)
    assert flux._fetch("data:image/png;base64," + base64.b64encode(png).decode()) == png
    for bad in ("data:image/png,rawtext", "data:image/png;base64,***"):
        with pytest.raises(TransientProviderError):
            flux._fetch(bad)


def test_polls_use_urls_get_only_under_our_base_url():
    flux = provider()
    mine = {"urls": {"get": "https://api.replicate.com/v1/predictions/abc"}}
    theirs = {"urls": {"get": "https://evil.example/v1/predictions/abc"}}
    assert flux._path(mine, "get", "/fallback") == "/predictions/abc"
    assert flux._path(theirs, "get", "/fallback") == "/fallback"
    assert flux._path({}, "get", "/fallback") == "/fallback"
