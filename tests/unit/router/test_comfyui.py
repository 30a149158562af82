"""ComfyUI runs from images requests (pure parts): the request's values, the filled
workflows, what a websocket message says of a run, the images in /history, the URL store."""

from __future__ import annotations

from typing import Any

import pytest

from mushishi.services.router.comfyui import (
    ImageStore,
    graphs,
    image_request,
    output_images,
    run_state,
)
from mushishi.services.router.errors import Rejection

TEMPLATE: dict[str, Any] = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 0, "steps": 4}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512,
                                                       "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": ""}},
}
INPUTS = {"prompt": "6.inputs.text", "seed": "3.inputs.seed", "width": "5.inputs.width",
          "height": "5.inputs.height"}


def test_the_request_values_with_defaults() -> None:
    wanted = image_request({"prompt": "fox"}, seed=9)
    assert (wanted.prompt, wanted.size, wanted.seed, wanted.n, wanted.response_format) == (
        "fox", None, 9, 1, "b64_json")
    wanted = image_request({"prompt": "fox", "size": "1024x768", "n": 3, "seed": 4,
                            "response_format": "url", "negative_prompt": "blur"})
    assert (wanted.size, wanted.seed, wanted.n, wanted.response_format,
            wanted.negative_prompt) == ((1024, 768), 4, 3, "url", "blur")


@pytest.mark.parametrize(("fields", "param"), [
    ({}, "prompt"), ({"prompt": ""}, "prompt"), ({"prompt": "x", "size": "1024"}, "size"),
    ({"prompt": "x", "size": "0x10"}, "size"), ({"prompt": "x", "n": 11}, "n"),
    ({"prompt": "x", "n": True}, "n"), ({"prompt": "x", "seed": -1}, "seed"),
    ({"prompt": "x", "response_format": "png"}, "response_format"),
])
def test_a_bad_value_is_a_400_naming_its_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(Rejection) as caught:
        image_request(fields)
    assert caught.value.status == 400 and caught.value.param == param


def test_n_fills_the_batch_size_or_makes_n_runs_with_consecutive_seeds() -> None:
    wanted = image_request({"prompt": "fox", "n": 3, "size": "64x32", "seed": 10})
    (batched,) = graphs(TEMPLATE, {**INPUTS, "n": "5.inputs.batch_size"}, wanted)
    assert batched["5"]["inputs"] == {"width": 64, "height": 32, "batch_size": 3}
    assert batched["6"]["inputs"]["text"] == "fox" and batched["3"]["inputs"]["seed"] == 10
    runs = graphs(TEMPLATE, INPUTS, wanted)
    assert [run["3"]["inputs"]["seed"] for run in runs] == [10, 11, 12]
    assert all(run["5"]["inputs"]["batch_size"] == 1 for run in runs)
    assert TEMPLATE["6"]["inputs"]["text"] == ""  # the template itself is untouched


@pytest.mark.parametrize(("message", "state"), [
    ({"type": "executing", "data": {"node": None, "prompt_id": "p"}}, "done"),
    ({"type": "execution_success", "data": {"prompt_id": "p", "timestamp": 1}}, "done"),
    ({"type": "executing", "data": {"node": "3", "prompt_id": "p"}}, None),
    ({"type": "progress", "data": {"value": 1, "max": 4, "prompt_id": "p"}}, None),
    ({"type": "execution_success", "data": {"prompt_id": "other"}}, None),
    ({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}}}, None),
    ({"type": "execution_error", "data": {
        "prompt_id": "p", "node_id": "10", "node_type": "KSampler",
        "exception_type": "torch.OutOfMemoryError", "exception_message": "secret prompt"}},
     "execution_error in node 10 (KSampler: torch.OutOfMemoryError)"),
    ({"type": "execution_error", "data": {"prompt_id": "p", "node_id": "a b",
                                          "node_type": "x", "exception_type": "y z"}},
     "execution_error in node ? (x: ?)"),
])
def test_websocket_messages_say_when_a_run_ends(message: dict[str, Any],
                                                state: str | None) -> None:
    assert run_state(message, "p") == state


def test_history_images_prefer_saved_outputs() -> None:
    history = {"p": {"outputs": {
        "9": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]},
        "12": {"images": [{"filename": "b.png", "subfolder": "", "type": "temp"}]}}}}
    assert [image["filename"] for image in output_images(history, "p")] == ["a.png"]
    del history["p"]["outputs"]["9"]
    assert [image["filename"] for image in output_images(history, "p")] == ["b.png"]
    assert output_images({}, "p") == []


def test_the_image_store_expires_and_stays_within_its_bytes() -> None:
    now = [0.0]
    store = ImageStore(lambda: now[0], ttl_s=10, max_bytes=10)
    first = store.put(b"123456", "image/png")
    assert store.get(first) == ("image/png", b"123456")
    second = store.put(b"abcdef", "image/png")  # 12 bytes would be too many
    assert store.get(first) is None and store.get(second) is not None
    now[0] = 11
    assert store.get(second) is None
    assert len(second) >= 20  # 128 random bits, URL-safe
