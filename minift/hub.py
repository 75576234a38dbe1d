"""Sharing an adapter on the Hugging Face Hub: a model card, then an upload of the adapter alone.

The seed chapter's fourth question ("must the licence stay separate?") is answered by sharing only
the adapter: the base model's weights and licence stay in the base model's own repository, and a
user loads the base from there and the adapter on top. So what goes up is exactly

    adapter_config.json          peft's config (minift.lora.save_adapter)
    adapter_model.safetensors    the LoRA A/B matrices
    README.md                    the model card: YAML front matter the Hub reads (base_model,
                                 library_name: peft, tags, licence), then what a reader needs to
                                 trust the adapter: base, data and how it was made, hyperparameters,
                                 the evaluation before/after, the memory measured while training

and nothing else: no optimizer states (they live in out_dir/train), no base or merged weights.

    write_model_card(report, adapter_dir, repo_id=...)   -> adapter_dir/README.md
    push_adapter(adapter_dir, repo_id)                   -> the commit URL, through huggingface_hub

huggingface_hub is the optional `hub` extra. Without it, or without a network or a login,
push_adapter raises HubUploadError saying what failed and the command that uploads the (ready)
folder later: `hf upload REPO_ID DIR .` (`huggingface-cli upload` before huggingface_hub 1.0).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shlex

from minift import safeio

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
CARD_NAME = "README.md"
SHIPPED_FILES = ADAPTER_FILES + (CARD_NAME,)

# Licences of the base models minift has presets for (their Hub repositories' cards): an adapter is
# a derivative of its base, so its card states the base's licence unless the author says otherwise.
BASE_LICENSES = {
    "Qwen/Qwen2.5-0.5B": "apache-2.0", "Qwen/Qwen2.5-0.5B-Instruct": "apache-2.0",
    "Qwen/Qwen2.5-1.5B": "apache-2.0", "Qwen/Qwen2.5-1.5B-Instruct": "apache-2.0",
    "Qwen/Qwen2.5-3B": "qwen-research", "Qwen/Qwen2.5-3B-Instruct": "qwen-research",
    "Qwen/Qwen2.5-7B": "apache-2.0", "Qwen/Qwen2.5-7B-Instruct": "apache-2.0",
    "HuggingFaceTB/SmolLM2-360M": "apache-2.0", "HuggingFaceTB/SmolLM2-360M-Instruct": "apache-2.0",
    "HuggingFaceTB/SmolLM2-135M": "apache-2.0", "HuggingFaceTB/SmolLM2-135M-Instruct": "apache-2.0",
}
# Licence ids the Hub knows; any other name is written as `license: other` + `license_name`.
_HUB_LICENSE_IDS = {"apache-2.0", "mit", "bsd-3-clause", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0",
                    "llama3.1", "llama3.2", "gemma", "openrail", "other"}

# The data minift ships, and how it was made (scripts/make_fairytales.py's docstring).
FAIRYTALE_DATA_NOTE = (
    "Synthetic Korean fairytale instruction pairs made by minift's template generator "
    "(`minift/fairytales.py`; `python scripts/make_fairytales.py --n-pairs 1000 --corpus-stories 1000 "
    "--seed 0 --out-dir data`). Each request names characters, a place, a lesson, a length and optional "
    "styles (an opening, a title, a moral line, a happy ending, ...); each answer is a story written from "
    "hand-written sentence banks that honours every element of its request. No text was scraped or "
    "written by another model.")

_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")


class HubUploadError(RuntimeError):
    """The upload did not happen. The message says why; .command uploads the folder later."""

    def __init__(self, message: str, command: str):
        super().__init__(message)
        self.command = command


def check_repo_id(repo_id: str) -> str:
    """`name` or `namespace/name` (letters, digits, '-', '_', '.'), checked before hours of training."""
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or ".." in repo_id or "--" in repo_id \
            or repo_id.endswith((".", "-")):
        raise ValueError(f"{repo_id!r} is not a Hub repository id: expected 'name' or 'namespace/name' of letters, "
                         "digits, '-', '_' and '.' (e.g. 'my-user/qwen2.5-fairytales-lora')")
    return repo_id


def upload_command(repo_id: str, adapter_dir: str) -> str:
    """The command line that uploads the folder by hand (huggingface_hub's CLI)."""
    args = f"{shlex.quote(repo_id)} {shlex.quote(adapter_dir)} ."
    return f"hf upload {args}   (huggingface_hub < 1.0: huggingface-cli upload {args})"


# ---------------------------------------------------------------------- the card
def _as_dict(report) -> dict:
    """A FinetuneReport (its fields and any attribute set on it, as report.json holds them), or that dict."""
    if dataclasses.is_dataclass(report):
        return dict(vars(report))
    if isinstance(report, dict):
        return report
    raise TypeError(f"report must be a FinetuneReport or its dict, got {type(report).__name__}")


def _is_hub_id(name: str | None) -> bool:
    # A base given as a local folder (runs/tiny-10m) is not a Hub repository, even when it looks like one.
    return bool(name) and bool(_REPO_ID.match(name)) and not os.path.exists(name)


def _gib(n) -> str:
    return f"{n / 2**30:.2f} GiB" if isinstance(n, (int, float)) else "n/a"


def _sha256(path: str) -> str | None:
    if not os.path.isfile(path):
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _yaml(key: str, value) -> list[str]:
    """One YAML entry. Strings are written as JSON strings, which YAML reads as double-quoted scalars."""
    if isinstance(value, list):
        return [f"{key}:"] + [f"- {json.dumps(v, ensure_ascii=False)}" for v in value]
    return [f"{key}: {json.dumps(value, ensure_ascii=False)}"]


def _metric(value, std=None) -> str:
    if not isinstance(value, (int, float)):
        return "n/a"
    text = f"{value:.3f}"
    return f"{text} ± {std:.3f}" if isinstance(std, (int, float)) else text


def _evaluation_rows(rep: dict) -> tuple[list[str], list[str]]:
    """Markdown table rows (loss, perplexity, then each story metric, mean ± std over sampling seeds),
    and notes on how the story evaluation was run."""
    before, after = rep.get("eval_before") or {}, rep.get("eval_after") or {}
    rows = [f"| held-out loss | {_metric(before.get('loss'))} | {_metric(after.get('loss'))} |",
            f"| held-out perplexity | {_metric(before.get('perplexity'))} | {_metric(after.get('perplexity'))} |"]
    notes = []
    s_before, s_after = rep.get("story_eval_before") or {}, rep.get("story_eval_after") or {}
    metrics = list(dict.fromkeys([*(s_before.get("mean") or {}), *(s_after.get("mean") or {})]))
    for name in metrics:
        cells = [_metric((s.get("mean") or {}).get(name), (s.get("std_over_seeds") or {}).get(name))
                 for s in (s_before, s_after)]
        rows.append(f"| {name} | {cells[0]} | {cells[1]} |")
    for label, s in (("before", s_before), ("after", s_after)):
        if s:
            notes.append(f"Stories {label}: {s.get('n_requests', '?')} held-out requests, sampling seeds "
                         f"{s.get('seeds', '?')} (± is the spread over those seeds).")
    return rows, notes


def render_model_card(report, repo_id: str | None = None, license: str | None = None,
                      data_note: str | None = None) -> str:
    """The README.md text for an adapter trained by minift.finetune (see the module docstring).
    license: a Hub licence id, or another name (written as license: other); default: the base's
    licence if it is one minift knows (BASE_LICENSES), else none is claimed."""
    rep = _as_dict(report)
    cfg = rep.get("config") or {}
    if cfg.get("method") not in ("lora", "qlora"):
        raise ValueError(f"a model card for the Hub is written for an adapter (method lora or qlora), not for "
                         f"method={cfg.get('method')!r}: only the adapter is shared, the base stays where it is")
    base = cfg.get("model")
    hub_base = base if _is_hub_id(base) else None
    license = license or BASE_LICENSES.get(hub_base or "")
    data_path = cfg.get("data") or ""
    if data_note is None and os.path.basename(data_path).startswith("fairytales_pairs"):
        data_note = FAIRYTALE_DATA_NOTE
    korean = data_note == FAIRYTALE_DATA_NOTE

    meta = []
    if hub_base:
        meta += _yaml("base_model", hub_base)
    meta += _yaml("library_name", "peft") + _yaml("pipeline_tag", "text-generation")
    if license:
        if license in _HUB_LICENSE_IDS:
            meta += _yaml("license", license)
        else:
            meta += _yaml("license", "other") + _yaml("license_name", license)
            if hub_base and license == BASE_LICENSES.get(hub_base):
                meta += _yaml("license_link", f"https://huggingface.co/{hub_base}/blob/main/LICENSE")
    if korean:
        meta += _yaml("language", ["ko"])
    tags = ([f"base_model:adapter:{hub_base}"] if hub_base else []) + [cfg["method"], "lora", "peft", "minift"]
    if korean:
        tags += ["korean", "fairytale"]
    meta += _yaml("tags", list(dict.fromkeys(tags)))

    name = repo_id.split("/")[-1] if repo_id else "LoRA adapter"
    base_text = f"[`{hub_base}`](https://huggingface.co/{hub_base})" if hub_base else f"`{base}`"
    where = ("its own repository; load the base from there and this adapter on top" if hub_base else
             "the folder it was trained from, which is not on the Hub: the adapter works only on top of that "
             "exact model (minift's embedded default is the ~10M GPT scripts/train_tiny.py trains from scratch)")
    method = "QLoRA (LoRA over the NF4-quantized base)" if cfg["method"] == "qlora" else "LoRA"
    lines = ["---", *meta, "---", "", f"# {name}", "",
             f"A {method} adapter for {base_text}, trained with minift (a from-first-principles fine-tuning "
             f"framework) and saved in peft's layout. Only the adapter is shared: the base model's weights and "
             f"licence stay in {where}.", ""]
    lines += ["## Base model", "", f"- {base_text}" + ("" if hub_base else " (a local model folder)"),
              f"- {rep.get('num_params', 0):,} parameters; {rep.get('trainable_params', 0):,} trained "
              f"({100 * rep.get('trainable_params', 0) / max(rep.get('num_params', 0), 1):.2f}%)",
              f"- licence: {license or 'not stated here: check the base model and set it before sharing'}", ""]

    stats = rep.get("data_stats") or {}
    lines += ["## Data", "", f"- file: `{data_path}`" + (f" (sha256 `{_sha256(data_path)}`)" if _sha256(data_path) else "")]
    if data_note:
        lines.append(f"- how it was made: {data_note}")
    for part in ("train", "held_out"):
        if stats.get(part):
            st = stats[part]
            lines.append(f"- {part.replace('_', '-')}: {st.get('num_examples', 0):,} example(s), "
                         f"{st.get('num_tokens', 0):,} tokens ({st.get('num_loss_tokens', 0):,} graded: the answers "
                         f"and their <|im_end|>), {st.get('num_truncated', 0):,} truncated at seq_len")
    lines += [f"- held-out fraction {cfg.get('val_fraction')}, split seed {cfg.get('seed')}; the loss is on the "
              "answers only (the chat template's prompt is context, not graded)", ""]

    hp = [("method", cfg.get("method")), ("r", cfg.get("r")), ("alpha", cfg.get("alpha")),
          ("dropout", cfg.get("dropout")), ("target modules", cfg.get("targets")),
          ("learning rate", cfg.get("lr") if cfg.get("lr") is not None else "2e-4 (default)"),
          ("steps", cfg.get("steps")), ("epochs", cfg.get("epochs")), ("batch size", cfg.get("batch_size")),
          ("gradient accumulation", cfg.get("grad_accum")), ("sequence length", cfg.get("seq_len")),
          ("warmup steps", cfg.get("warmup")), ("gradient checkpointing", cfg.get("grad_ckpt")),
          ("base dtype", cfg.get("dtype")), ("device", cfg.get("device")), ("seed", cfg.get("seed"))]
    lines += ["## Training hyperparameters", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v} |"
              for k, v in hp if v is not None]
    lines.append("")

    rows, notes = _evaluation_rows(rep)
    lines += ["## Evaluation", "", "| | before (base) | after (base + adapter) |", "|---|---|---|", *rows, ""]
    lines += notes + ([""] if notes else [])

    lines += ["## Memory and time (measured while training)", "",
              f"- predicted peak (minift.memory): {_gib(rep.get('predicted_peak_bytes'))}",
              f"- measured peak: {_gib(rep.get('measured_peak_bytes'))} ({rep.get('measured_peak_kind', 'n/a')})",
              f"- training: {rep.get('train_time_s', 0):.0f} s at {rep.get('tokens_per_s', 0):,.0f} tokens/s "
              f"on device `{cfg.get('device')}`",
              f"- what ships: {rep.get('saved_bytes', 0) / 1e6:.2f} MB (the adapter)", ""]

    if rep.get("sample_prompt"):
        lines += ["## Sample (one held-out request)", "", "Request:", "", "```text", rep["sample_prompt"], "```", "",
                  "Before (the base alone):", "", "```text", rep.get("sample_before", ""), "```", "",
                  "After (base + adapter):", "", "```text", rep.get("sample_after", ""), "```", ""]

    repo = repo_id or "THIS_REPO_ID"
    load_base = hub_base or base
    lines += ["## Use", "", "With transformers and peft:", "", "```python",
              "from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              f"base = AutoModelForCausalLM.from_pretrained({load_base!r})",
              f"tokenizer = AutoTokenizer.from_pretrained({load_base!r})",
              f"model = PeftModel.from_pretrained(base, {repo!r})", "```", "",
              "With minift (after `hf download` of the adapter into a folder):", "", "```python",
              "import minift", "from minift import lora", "",
              f"model = lora.load_adapter(minift.load_pretrained({load_base!r}), 'path/to/adapter')",
              "```", ""]
    return "\n".join(lines)


def write_model_card(report, adapter_dir: str, repo_id: str | None = None, license: str | None = None,
                     data_note: str | None = None) -> str:
    """Write adapter_dir/README.md (atomically) and return its path; see render_model_card."""
    missing = [f for f in ADAPTER_FILES if not os.path.isfile(os.path.join(adapter_dir, f))]
    if missing:
        raise FileNotFoundError(f"{adapter_dir}: not an adapter folder (missing {', '.join(missing)}; "
                                "minift.lora.save_adapter writes them)")
    text = render_model_card(report, repo_id=repo_id, license=license, data_note=data_note)
    path = os.path.join(adapter_dir, CARD_NAME)
    with safeio.atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


# ---------------------------------------------------------------------- the upload
def check_adapter_folder(adapter_dir: str) -> list[str]:
    """The folder holds exactly SHIPPED_FILES (so that uploading the whole folder by hand ships only
    the adapter and its card); returns them, else raises naming what is missing or extra."""
    if not os.path.isdir(adapter_dir):
        raise FileNotFoundError(f"{adapter_dir}: no such folder")
    present = sorted(os.listdir(adapter_dir))
    missing = [f for f in SHIPPED_FILES if f not in present]
    extra = [f for f in present if f not in SHIPPED_FILES]
    if missing or extra:
        raise ValueError(f"{adapter_dir}: an adapter folder for the Hub holds exactly {', '.join(SHIPPED_FILES)}"
                         + (f"; missing {', '.join(missing)}" if missing else "")
                         + (f"; not to be shared: {', '.join(extra)} (move it out)" if extra else ""))
    return present


def push_adapter(adapter_dir: str, repo_id: str, *, private: bool | None = None, token: str | None = None,
                 endpoint: str | None = None, commit_message: str = "Upload LoRA adapter (minift)") -> str:
    """Create the model repository if needed and upload the adapter and its card, nothing else.
    Returns the commit URL. Raises HubUploadError (with .command) when huggingface_hub is missing or
    the upload fails (no network, no login, no permission); the folder is left as it is, ready."""
    check_repo_id(repo_id)
    files = check_adapter_folder(adapter_dir)
    command = upload_command(repo_id, adapter_dir)
    try:
        import huggingface_hub
    except ImportError:
        raise HubUploadError(f"huggingface_hub is not installed: pip install 'minift[hub]' (or pip install "
                             f"huggingface_hub). {adapter_dir} is ready; after installing, upload it with:\n"
                             f"  {command}", command) from None
    api = huggingface_hub.HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=adapter_dir, repo_type="model",
                                 allow_patterns=files, commit_message=commit_message)
    except Exception as e:  # the network, the login, the permissions: huggingface_hub and httpx raise many types
        login = "" if (token or huggingface_hub.get_token()) else \
            " No Hugging Face token was found: log in with `hf auth login` or set HF_TOKEN."
        raise HubUploadError(f"upload of {adapter_dir} to {repo_id} failed ({type(e).__name__}: {e}).{login} "
                             f"The folder is ready; upload it later with:\n  {command}", command) from e
    return str(getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}")
