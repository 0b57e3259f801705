"""The tiny byte-level BPE tokenizers and chat templates of every tiny VLM family.

Each family (LLaVA, Qwen-VL, InternVL, Gemma 3) gets a real ``PreTrainedTokenizerFast`` trained in
memory on a small built-in English corpus, with the special tokens and the chat template of the
released tokenizers. Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
)

# Number of learned BPE merges on top of the 256 byte symbols and the special tokens.
_BPE_MERGES = 160

# The text the tiny BPE is trained on: chat words, image words and ordinary English.
_CORPUS: tuple[str, ...] = (
    "USER: ASSISTANT: SYSTEM: user assistant system model",
    "what is in this picture? what is in the image? describe the image in detail.",
    "Describe this photo. What do you see? Is there a cat or a dog in this picture?",
    "a red square and a blue circle on a green background, with a yellow line.",
    "There is a small black box next to a white triangle. The sky is blue.",
    "You are a helpful assistant. Answer the question briefly and honestly.",
    "How many objects are there? What colour is the shape? Where is it?",
    "I cannot help with that. Sure, here is the answer: it is a picture of a house.",
    "The quick brown fox jumps over the lazy dog. Hello world! Yes, no, maybe.",
    "one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9",
    "Tell me a story about the people, the animals and the things in the scene.",
)


@dataclass(frozen=True)
class TokenizerSpec:
    """What a family's tokenizer needs on top of the shared byte-level BPE.

    Attributes:
        special: Special tokens, in id order, added before the learned vocabulary.
        named: Named special tokens passed to the tokenizer (``bos_token``, ``image_token``, ...).
        chat_template: The Jinja chat template of the family.
    """

    special: tuple[str, ...]
    named: Mapping[str, str] = field(default_factory=dict)
    chat_template: str = ""


# --------------------------------------------------------------------------------------------------
# Chat templates. Each supports string content and content lists of {"type": "image"} and
# {"type": "text"} items, system/user/assistant roles and add_generation_prompt.
# --------------------------------------------------------------------------------------------------

LLAVA_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{- 'SYSTEM: ' -}}"
    "{%- elif message['role'] == 'user' -%}{{- 'USER: ' -}}"
    "{%- else -%}{{- 'ASSISTANT: ' -}}{%- endif -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{- '<image>\n' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{{- eos_token -}}{%- endif -%}"
    "{{- ' ' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

# Qwen also renders tools the Hermes way Qwen2.5 does: a system turn listing the JSON schemas,
# assistant tool calls as <tool_call>{"name": ..., "arguments": ...}</tool_call>, tool results as a
# user turn in <tool_response> tags. Without tools / tool messages the output is unchanged.
QWEN_TEMPLATE = (
    "{%- if tools -%}"
    "{{- '<|im_start|>system\n# Tools\n\nYou may call one or more functions to assist with the user "
    "query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>' -}}"
    "{%- for tool in tools -%}{{- '\n' + (tool | tojson) -}}{%- endfor -%}"
    "{{- '\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}'
    "\n</tool_call><|im_end|>\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'tool' -%}{{- '<|im_start|>user\n<tool_response>\n' -}}"
    "{%- else -%}{{- '<|im_start|>' + message['role'] + '\n' -}}{%- endif -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- if message['role'] == 'assistant' and message['tool_calls'] is defined -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- set fn = call['function'] if call['function'] is defined else call -%}"
    "{{- '\n<tool_call>\n' + ({'name': fn['name'], 'arguments': fn['arguments']} | tojson)"
    " + '\n</tool_call>' -}}"
    "{%- endfor -%}{%- endif -%}"
    "{%- if message['role'] == 'tool' -%}{{- '\n</tool_response>' -}}{%- endif -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)

INTERNVL_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{- '<IMG_CONTEXT>\n' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)

GEMMA3_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{- '<start_of_turn>' + role + '\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{- '<start_of_image>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<end_of_turn>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}"
)

LLAVA_TOKENS = TokenizerSpec(
    special=("<unk>", "<s>", "</s>", "<pad>", "<image>"),
    named=MappingProxyType(
        {
            "unk_token": "<unk>",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "pad_token": "<pad>",
            "image_token": "<image>",
        }
    ),
    chat_template=LLAVA_TEMPLATE,
)

QWEN_TOKENS = TokenizerSpec(
    special=(
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|vision_pad|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ),
    named=MappingProxyType({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
    chat_template=QWEN_TEMPLATE,
)

INTERNVL_TOKENS = TokenizerSpec(
    special=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"),
    named=MappingProxyType(
        {
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        }
    ),
    chat_template=INTERNVL_TEMPLATE,
)

GEMMA3_TOKENS = TokenizerSpec(
    special=(
        "<pad>",
        "<eos>",
        "<bos>",
        "<unk>",
        "<start_of_turn>",
        "<end_of_turn>",
        "<start_of_image>",
        "<end_of_image>",
        "<image_soft_token>",
    ),
    named=MappingProxyType(
        {
            "pad_token": "<pad>",
            "eos_token": "<eos>",
            "bos_token": "<bos>",
            "unk_token": "<unk>",
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        }
    ),
    chat_template=GEMMA3_TEMPLATE,
)


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------


def build_tokenizer(spec: TokenizerSpec) -> PreTrainedTokenizerFast:
    """Trains a byte-level BPE over :data:`_CORPUS` and wraps it with the family's special tokens.

    Every string can be encoded (the 256 byte symbols are in the vocabulary) and decoded back
    exactly. The special tokens take the first ids, in the order of ``spec.special``. No special
    token is added automatically when encoding: the chat templates write ``bos_token`` themselves.
    Special tokens without a name (``<|im_start|>``, ``<|vision_start|>``, ...) are declared as
    ``extra_special_tokens``, like in the released tokenizers.

    Args:
        spec: The family's special tokens and chat template.

    Returns:
        A left-padding ``PreTrainedTokenizerFast`` with the chat template and named special tokens set.
    """
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=len(spec.special) + 256 + _BPE_MERGES,
        special_tokens=list(spec.special),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS, trainer=trainer)
    named = set(spec.named.values())
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        chat_template=spec.chat_template,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        extra_special_tokens=[token for token in spec.special if token not in named],
        **spec.named,
    )


def token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    """Returns the id of a token that must exist in the vocabulary.

    Args:
        tokenizer: The tokenizer to look the token up in.
        token: The token string.

    Returns:
        The token id.

    Raises:
        KeyError: If the token is not in the vocabulary.
    """
    token_id = tokenizer.get_vocab().get(token)
    if token_id is None:
        raise KeyError(f"token {token!r} is not in the tiny vocabulary")
    return token_id
