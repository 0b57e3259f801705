"""ChatSteeredVLM: invoke and stream with an image, per-call steering, offline.

Runs on the embedded tiny LLaVA (random weights, built locally, nothing downloaded), so the text is
gibberish: what it shows is the plumbing. With a real model, swap the first lines for
``ChatSteeredVLM.from_pretrained("Qwen/Qwen2-VL-2B-Instruct", vectors="org/qwen2-vl-2b-cmrm")``.

Run: ``python examples/langchain_invoke_stream.py``
"""

from __future__ import annotations

import base64
import io

import torch
from langchain_core.messages import HumanMessage

from cmrm_guard import SteeredVLM, SteeringLock, count_hooks
from cmrm_guard.langchain import ChatSteeredVLM
from cmrm_guard.testing import build_tiny_vlm, tiny_image


def main(max_tokens: int = 12) -> dict:
    model, processor = build_tiny_vlm("llava")
    generator = torch.Generator().manual_seed(0)
    vectors = {i: torch.randn(64, generator=generator) for i in range(2)}  # stand-in for a vector pack
    # a strict chat model (the default) refuses requests that weaken steering; this example turns
    # steering off per call to compare, so its deployer allows that explicitly
    llm = ChatSteeredVLM(
        steered=SteeredVLM(model, processor, vectors=vectors),
        max_tokens=max_tokens,
        lock=SteeringLock(allow_disable=True),
    )

    buffer = io.BytesIO()
    tiny_image(0).save(buffer, format="PNG")
    b64 = base64.b64encode(buffer.getvalue()).decode()
    question = HumanMessage(
        content=[
            {"type": "image", "base64": b64, "mime_type": "image/png"},
            {"type": "text", "text": "What should I do with this?"},
        ]
    )

    reply = llm.invoke([question])
    print("invoke:", repr(reply.content))
    print("steering applied:", reply.response_metadata["cmrm_steering"])
    print("usage:", reply.usage_metadata)

    print("stream: ", end="")
    streamed = ""
    for chunk in llm.stream([question]):
        streamed += chunk.content
        print(chunk.content, end="|", flush=True)
    print()

    unsteered = llm.invoke([question], steering={"enabled": False})  # per-call override
    print("unsteered:", repr(unsteered.content), unsteered.response_metadata["cmrm_steering"]["reason"])
    print("hooks left on the model:", count_hooks(model))
    return {
        "invoke": reply.content,
        "stream": streamed,
        "unsteered": unsteered.content,
        "hooks": count_hooks(model),
    }


if __name__ == "__main__":
    main()
