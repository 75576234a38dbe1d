"""minift.hub and lora_qwen.py --push-to-hub, with no network: the folder that ships holds exactly
the adapter and its card; the card's YAML front matter is what huggingface_hub reads (parsed by
huggingface_hub's own ModelCard) and its body carries the report's numbers; the upload goes through
HfApi.create_repo / upload_folder with only those files (the two methods intercepted); a missing
huggingface_hub, a refused connection and an offline Hub each end in HubUploadError with the
command that uploads the folder later."""
import dataclasses
import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

import minift
from minift import fairytales, hub, lora
from minift.finetune import FinetuneConfig, FinetuneReport
from minift.tokenizer import train_bpe
from conftest import pythonpath_with  # noqa: E402

huggingface_hub = pytest.importorskip("huggingface_hub")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = ["README.md", "adapter_config.json", "adapter_model.safetensors"]
STORY_BEFORE = {"mean": {"characters_named": 0.12, "place_named": 0.05, "no_repeated_line": 0.4},
                "std_over_seeds": {"characters_named": 0.01, "place_named": 0.02, "no_repeated_line": 0.05},
                "n_requests": 50, "seeds": [0, 1, 2], "per_request": []}
STORY_AFTER = {"mean": {"characters_named": 0.85, "place_named": 0.74, "no_repeated_line": 1.0},
               "std_over_seeds": {"characters_named": 0.02, "place_named": 0.03, "no_repeated_line": 0.0},
               "n_requests": 50, "seeds": [0, 1, 2], "per_request": []}


def small_model(vocab_size=300):
    cfg = dataclasses.replace(minift.ModelConfig.preset("tiny-10m"), vocab_size=vocab_size, hidden_size=32,
                              intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=None, torch_dtype="float32")
    torch.manual_seed(0)
    return minift.Transformer(cfg)


@pytest.fixture
def adapter_run(tmp_path):
    """A run folder as finetune() leaves it: adapter/ (peft layout), train/ (optimizer states), the data."""
    data = tmp_path / "fairytales_pairs.jsonl"
    fairytales.write_jsonl([p.alpaca() for p in fairytales.generate_pairs(5)], str(data))
    model = lora.add_lora(small_model(), r=4, alpha=8)
    adapter = lora.save_adapter(model, str(tmp_path / "adapter"), base_model_name_or_path="Qwen/Qwen2.5-0.5B-Instruct")
    (tmp_path / "train" / "checkpoint").mkdir(parents=True)
    (tmp_path / "train" / "checkpoint" / "optimizer.safetensors").write_bytes(b"not shipped")
    cfg = FinetuneConfig(model="Qwen/Qwen2.5-0.5B-Instruct", data=str(data), out_dir=str(tmp_path), r=4, alpha=8,
                         lr=2e-4, steps=120, batch_size=4, seq_len=768, device="cuda", dtype="bfloat16")
    stats = {"num_examples": 950, "num_tokens": 581_000, "num_loss_tokens": 483_000, "num_truncated": 0}
    report = FinetuneReport(
        config=dataclasses.asdict(cfg), model_dir="/cache/qwen", num_params=494_032_768, trainable_params=8_798_208,
        predicted_peak_bytes=int(5.1 * 2**30), measured_peak_bytes=int(4.87 * 2**30),
        measured_peak_kind="torch.cuda.max_memory_allocated", eval_before={"loss": 0.835, "perplexity": 2.305},
        eval_after={"loss": 0.609, "perplexity": 1.839}, sample_prompt="고양이와 돼지가 나오는 동화를 써 주세요.",
        sample_before="before text", sample_after="옛날 옛적에 고양이와 돼지가 살았어요.", train_time_s=312.4,
        tokens_per_s=9_871.0, saved={"adapter": adapter}, saved_bytes=35_200_000,
        data_stats={"train": stats, "held_out": dict(stats, num_examples=50, num_tokens=30_500)})
    report.story_eval_before, report.story_eval_after = STORY_BEFORE, STORY_AFTER  # the evaluation's fields
    return report, adapter, str(data)


def front_matter(path):
    return huggingface_hub.ModelCard.load(path).data.to_dict()


# ---------------------------------------------------------------------- the card
def test_card_fields_and_the_folder_that_ships(adapter_run):
    report, adapter, data = adapter_run
    path = hub.write_model_card(report, adapter, repo_id="me/qwen-fairytales-lora")
    assert sorted(os.listdir(adapter)) == SHIPPED                 # no optimizer states, no base weights
    assert hub.check_adapter_folder(adapter) == SHIPPED
    meta = front_matter(path)
    assert meta["base_model"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
    assert meta["license"] == "apache-2.0" and meta["language"] == ["ko"]
    assert {"base_model:adapter:Qwen/Qwen2.5-0.5B-Instruct", "lora", "peft", "minift", "korean"} <= set(meta["tags"])
    with open(path, encoding="utf-8") as f:
        card = f.read()
    with open(data, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() in card       # the exact data file
    for text in ["# qwen-fairytales-lora", "scripts/make_fairytales.py", "494,032,768 parameters; 8,798,208 trained",
                 "| r | 4 |", "| alpha | 8 |", "| learning rate | 0.0002 |", "| steps | 120 |", "| sequence length | 768 |",
                 "| held-out loss | 0.835 | 0.609 |", "| held-out perplexity | 2.305 | 1.839 |",
                 "| characters_named | 0.120 ± 0.010 | 0.850 ± 0.020 |", "| place_named | 0.050 ± 0.020 | 0.740 ± 0.030 |",
                 "50 held-out requests, sampling seeds [0, 1, 2]", "predicted peak (minift.memory): 5.10 GiB",
                 "measured peak: 4.87 GiB (torch.cuda.max_memory_allocated)", "train: 950 example(s), 581,000 tokens",
                 "옛날 옛적에 고양이와 돼지가 살았어요.", "PeftModel.from_pretrained(base, 'me/qwen-fairytales-lora')"]:
        assert text in card, text
    # The report as report.json holds it (a dict, after a JSON round trip) renders the same card.
    as_json = json.loads(json.dumps(dict(report.__dict__), default=str))
    assert hub.render_model_card(as_json, repo_id="me/qwen-fairytales-lora") == card


def test_card_for_a_local_base_a_research_licence_and_no_story_eval(adapter_run, tmp_path):
    report, adapter, _ = adapter_run
    local = tmp_path / "tiny-10m"
    local.mkdir()
    report.config = dict(report.config, model=str(local))
    del report.story_eval_before, report.story_eval_after
    meta = front_matter(hub.write_model_card(report, adapter))
    assert "base_model" not in meta and "license" not in meta       # a folder is no Hub id; no licence claimed
    card = hub.render_model_card(report)
    assert "(a local model folder)" in card and "which is not on the Hub" in card and "characters_named" not in card
    report.config = dict(report.config, model="Qwen/Qwen2.5-3B-Instruct", method="qlora")
    meta = front_matter(hub.write_model_card(report, adapter))
    assert (meta["license"], meta["license_name"]) == ("other", "qwen-research")
    assert meta["license_link"] == "https://huggingface.co/Qwen/Qwen2.5-3B-Instruct/blob/main/LICENSE"
    assert "qlora" in meta["tags"] and front_matter(hub.write_model_card(report, adapter, license="mit"))["license"] == "mit"
    report.config = dict(report.config, method="full")
    with pytest.raises(ValueError, match="only the adapter is shared"):
        hub.render_model_card(report)
    with pytest.raises(FileNotFoundError, match="missing adapter_model.safetensors"):
        os.remove(os.path.join(adapter, "adapter_model.safetensors"))
        hub.write_model_card(report, adapter)


# ---------------------------------------------------------------------- the upload
@pytest.fixture
def recorded(monkeypatch):
    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kw):
        calls.append(("upload_folder", kw))
        # What huggingface_hub itself would send, given the folder and the patterns.
        files = sorted(os.path.relpath(os.path.join(d, f), kw["folder_path"])
                       for d, _, fs in os.walk(kw["folder_path"]) for f in fs)
        sent = list(huggingface_hub.utils.filter_repo_objects(files, allow_patterns=kw["allow_patterns"]))
        calls.append(("sent", sorted(sent)))
        return huggingface_hub.CommitInfo(commit_url=f"https://huggingface.co/{kw['repo_id']}/commit/abc",
                                          commit_message=kw["commit_message"], commit_description="", oid="abc")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return calls


def test_push_uploads_only_the_adapter_and_card(adapter_run, recorded):
    report, adapter, _ = adapter_run
    hub.write_model_card(report, adapter, repo_id="me/fairy")
    url = hub.push_adapter(adapter, "me/fairy", private=True, token="hf_test")
    assert url == "https://huggingface.co/me/fairy/commit/abc"
    assert recorded[0] == ("create_repo", "me/fairy", {"repo_type": "model", "private": True, "exist_ok": True})
    name, kw = recorded[1]
    assert name == "upload_folder" and kw["repo_id"] == "me/fairy" and kw["folder_path"] == adapter
    assert kw["repo_type"] == "model" and sorted(kw["allow_patterns"]) == SHIPPED
    assert recorded[2] == ("sent", SHIPPED)


def test_push_refuses_a_folder_with_anything_else(adapter_run, recorded):
    report, adapter, _ = adapter_run
    with pytest.raises(ValueError, match="missing README.md"):
        hub.push_adapter(adapter, "me/fairy")
    hub.write_model_card(report, adapter)
    with open(os.path.join(adapter, "optimizer.safetensors"), "wb") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="not to be shared: optimizer.safetensors"):
        hub.push_adapter(adapter, "me/fairy")
    assert recorded == []                                           # nothing was sent


@pytest.mark.parametrize("repo_id", ["me/fairy", "fairy", "Org-1/name_2.v3"])
def test_repo_ids_accepted(repo_id):
    assert hub.check_repo_id(repo_id) == repo_id


@pytest.mark.parametrize("repo_id", ["", "a/b/c", "me/fair y", "me/-x", "me/a..b", "me/x.", "https://huggingface.co/me/x"])
def test_repo_ids_refused(repo_id):
    with pytest.raises(ValueError, match="not a Hub repository id"):
        hub.check_repo_id(repo_id)


def test_no_network_no_login_and_no_extra_each_say_what_to_do(adapter_run, monkeypatch):
    report, adapter, _ = adapter_run
    hub.write_model_card(report, adapter, repo_id="me/fairy")
    # A refused connection, through huggingface_hub's real code (nothing listens on port 9).
    with pytest.raises(hub.HubUploadError, match=r"upload of .* to me/fairy failed \(\w*ConnectError") as e:
        hub.push_adapter(adapter, "me/fairy", token="hf_test", endpoint="http://127.0.0.1:9")
    assert e.value.command.startswith(f"hf upload me/fairy {adapter} .") and "huggingface-cli upload" in e.value.command
    assert e.value.command in str(e.value) and "hf auth login" not in str(e.value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(hub.HubUploadError, match="No Hugging Face token was found: log in with `hf auth login`"):
        hub.push_adapter(adapter, "me/fairy", endpoint="http://127.0.0.1:9")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)    # the `hub` extra not installed
    with pytest.raises(hub.HubUploadError, match=r"pip install 'minift\[hub\]'.*\n  hf upload me/fairy"):
        hub.push_adapter(adapter, "me/fairy")
    assert sorted(os.listdir(adapter)) == SHIPPED                   # left ready


# ---------------------------------------------------------------------- the script, offline
@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_base")
    tok = train_bpe(fairytales.generate_stories(10, seed=3) + [p.instruction for p in fairytales.generate_pairs(20)],
                    vocab_size=500)
    model = small_model(tok.vocab_size)
    model.config.eos_token_id, model.config.pad_token_id = tok.eos_token_ids, tok.pad_token_id
    minift.save_pretrained(model, str(out), tokenizer=tok)
    return str(out)


def test_lora_qwen_push_to_hub_offline(tiny_base, tmp_path):
    data = tmp_path / "fairytales_pairs.jsonl"
    fairytales.write_jsonl([p.chat() for p in fairytales.generate_pairs(20, seed=0)], str(data))
    env = dict(os.environ, PYTHONPATH=pythonpath_with(ROOT), HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "cache"),
               OMP_NUM_THREADS="1", HF_TOKEN="hf_test")
    script = os.path.join(ROOT, "scripts", "lora_qwen.py")
    common = [sys.executable, script, "--model", tiny_base, "--data", str(data), "--steps", "1", "--batch-size", "2",
              "--seq-len", "384", "--device", "cpu", "--dtype", "float32", "--no-progress"]
    # Three processes side by side (each is mostly torch's import): two refused before any training.
    procs = {name: subprocess.Popen(common + ["--out", str(tmp_path / name)] + extra, cwd=tmp_path, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, extra in (("run", ["--push-to-hub", "me/fairy-lora"]),
                                 ("full", ["--push-to-hub", "me/x", "--method", "full"]),
                                 ("bad-id", ["--push-to-hub", "a/b/c"]))}
    results = {name: (p.communicate(timeout=600), p.returncode) for name, p in procs.items()}
    for name, why in (("full", "shares an adapter"), ("bad-id", "not a Hub repository id")):
        (out, err), rc = results[name]
        assert rc == 2 and why in err and not (tmp_path / name).exists()
    (out, err), rc = results["run"]
    assert rc == 1, err[-3000:]
    adapter = tmp_path / "run" / "adapter"
    assert sorted(os.listdir(adapter)) == SHIPPED
    assert "not uploaded: upload of" in err and "OfflineModeIsEnabled" in err
    assert f"hf upload me/fairy-lora {adapter} ." in err and f"model card: {adapter / 'README.md'}" in out
    with open(tmp_path / "run" / "report.json", encoding="utf-8") as f:
        rep = json.load(f)
    meta = front_matter(str(adapter / "README.md"))
    assert "base_model" not in meta and meta["library_name"] == "peft"   # the base is a local folder
    with open(adapter / "README.md", encoding="utf-8") as f:
        card = f.read()
    assert f"| held-out loss | {rep['eval_before']['loss']:.3f} | {rep['eval_after']['loss']:.3f} |" in card
    assert f"train: {rep['data_stats']['train']['num_examples']:,} example(s)" in card
