"""The measured numbers in docs/ checked against the files the scripts wrote (issue 15).

Every table of numbers in docs/memory.md, speed.md, cpu.md and distributed.md carries a marker on
the line right above it, and so does every paragraph whose measured numbers are checked:

    <!-- numbers: results/cpu/bench_generate_float32.json results/cpu/bench_generate_bfloat16.json -->
    <!-- numbers in the text below: results/h200/bench_fast.json -->
    <!-- numbers: none (why) -->          a table of predictions or formulas, not of measurements

Each marker pairs with one entry of CHECKS below (same doc, same kind, same sources; markers that
share all three pair with the entries in the order both appear). An entry says how each of its
table's cells comes out of the sources: the row is found by its leading cells (the row key), each
column is one JSON value formatted with the rounding the table shows. A paragraph's entry lists
phrases, each with its numbers formatted from the sources, that must appear in it word for word.
A number edited in a doc, or a script re-run that writes another number, fails here until the two
agree again; the files under results/ are the truth. Only markdown, JSON, the text profiles and
the literal tables of minift/memory.py (read with ast, nothing imported) are read.
"""
from __future__ import annotations

import ast
import datetime
import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[1]
CAPSTONE_JOB = "results/h200/lora_qwen_job_2026-12-01/report.json"
DOCS = ("docs/memory.md", "docs/speed.md", "docs/cpu.md", "docs/distributed.md")
MARKER = re.compile(r"<!-- numbers( in the text below)?: (.+?) -->")


# ---- reading the sources -----------------------------------------------------------------------

@functools.cache
def load(path: str):
    """A source file: JSON parsed, a text profile as its text, a .py file as its literal tables."""
    text = (ROOT / path).read_text(encoding="utf-8")
    if path.endswith(".json"):
        return json.loads(text)
    if path.endswith(".py"):   # the module's top-level NAME = <literal> assignments, without importing it
        return {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(text).body
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id.isupper() and _is_literal(node.value)}
    return text


def _is_literal(node) -> bool:
    try:
        ast.literal_eval(node)
        return True
    except (ValueError, TypeError, SyntaxError):
        return False


def pick(rows: list[dict], **fields) -> dict:
    """The one row of a JSON list whose fields have these values."""
    found = [r for r in rows if all(r.get(k) == v for k, v in fields.items())]
    assert len(found) == 1, f"{len(found)} rows with {fields} (expected exactly one)"
    return found[0]


# ---- the roundings the docs show ---------------------------------------------------------------

def gb(nbytes) -> str:              # GB = 10^9 bytes, two decimals
    return f"{nbytes / 1e9:.2f}"


def gib(nbytes) -> str:             # GiB = 2^30 bytes, two decimals
    return f"{nbytes / 2 ** 30:.2f}"


def tps(x) -> str:                  # tokens per second, whole, with thousands commas: 125,716
    return f"{x:,.0f}"


def pct(fraction, digits=1) -> str:
    return f"{100 * fraction:.{digits}f}%"


def times(ratio) -> str:            # a speed ratio: 2.07x
    return f"{ratio:.2f}x"


def sci(x) -> str:                  # one significant digit, exponent as the docs write it: 6e-8
    return f"{x:.0e}".replace("e-0", "e-")


def span(values, spec: str) -> str:
    """'lo-hi' of values in format spec, or one value where both ends read the same."""
    lo, hi = format(min(values), spec), format(max(values), spec)
    return lo if lo == hi else f"{lo}-{hi}"


def hbm(row) -> float:
    """A kernel's bandwidth as a fraction of the H200's 4.3 TB/s (scripts/check_kernels.py's
    HBM_BYTES_PER_S), from its GB/s: the JSON's own of_4.3TBps is rounded to 0.001 first."""
    return row["GBps"] * 1e9 / 4.3e12


def size_of(model: str) -> str:     # "Qwen/Qwen2.5-0.5B-Instruct", "qwen2.5-7b", "0.5b" -> "0.5B"
    return re.search(r"(?:^|-)(\d+(?:\.\d+)?)[bB]\b", model).group(1) + "B"


def seed_total(memory_py: dict, method: str, size: str) -> str:
    """The seed chapter's GB for a method and size (its tables as minift/memory.py holds them)."""
    table = {"full": "SEED_FULL", "lora": "SEED_LORA", "qlora": "SEED_QLORA"}[method]
    parts = memory_py[table].get(size)
    return "-" if parts is None else f"{parts[-1]:g}"


@dataclass(frozen=True)
class Prose:
    """A cell of words around numbers: it starts with `starts` and contains each of `contains`."""
    starts: str
    contains: tuple[str, ...] = ()

    def matches(self, cell: str) -> bool:
        return cell.startswith(self.starts) and all(c in cell for c in self.contains)


# ---- what each marked table and paragraph must say ---------------------------------------------

@dataclass
class Table:
    name: str
    doc: str
    sources: tuple[str, ...]
    key_columns: int            # how many leading cells name a row
    expected: Callable          # (*loaded sources) -> {row key: {column header: str | Prose}}
    not_from_sources: dict[str, str] = field(default_factory=dict)   # column -> why it is not checked
    kind = "table"


@dataclass
class Text:
    name: str
    doc: str
    sources: tuple[str, ...]
    expected: Callable          # (*loaded sources) -> [phrase that must appear in the paragraph]
    kind = "text"


# docs/memory.md

# The capstone's settings (dropout, packed rows) on Qwen2.5-0.5B LoRA r=16, bf16 adapter math:
# run label -> (batch, seq, dropout, packed, fused). The measured peaks are earlier H200 runs;
# the predictions are today's memory.estimate, so a change to the math shows here.
CAPSTONE_SETTINGS = {
    "benchmark step (profile)": (4, 1024, 0.0, False, True),
    "dropout (profile, --unfused)": (4, 1024, 0.05, False, False),
    "packed rows (profile, --unfused)": (4, 1024, 0.0, True, False),
    "both (profile, --unfused)": (4, 1024, 0.05, True, False),
    "both (profile)": (4, 1024, 0.05, True, True),
    "bench_recipe, not compiled": (4, 1024, 0.05, True, True),
    "bench_recipe, --compile": (4, 1024, 0.05, True, True),
    "lora_qwen.py's job, its defaults": (4, 960, 0.05, True, True),
}


def capstone_settings_intro(report):
    return [f"measured {gb(report['measured_peak_bytes'])} GB where its report predicted "
            f"{gb(report['predicted_peak_bytes'])}", f"its defaults: {report['config']['batch_size']} x "
                                                      f"{report['config']['seq_len']}"]


def capstone_settings(plain, dropout, packed, both, both_fused, recipe, report, _memory_py):
    from minift import memory
    from minift.config import ModelConfig

    def profile_peak(text):
        return float(re.search(r"peak ([\d.]+) GB", text).group(1)) * 1e9
    measured = {"benchmark step (profile)": profile_peak(plain), "dropout (profile, --unfused)": profile_peak(dropout),
                "packed rows (profile, --unfused)": profile_peak(packed), "both (profile, --unfused)": profile_peak(both),
                "both (profile)": profile_peak(both_fused), "bench_recipe, not compiled": recipe["minift"]["peak_bytes"],
                "bench_recipe, --compile": recipe["minift_compile"]["peak_bytes"],
                "lora_qwen.py's job, its defaults": report["measured_peak_bytes"]}
    rows = {}
    for run, (batch, seq, p, packed_rows, fused) in CAPSTONE_SETTINGS.items():
        predicted = memory.estimate(ModelConfig.preset("qwen2.5-0.5b"), "lora", batch, seq,
                                    lora_compute_dtype="bfloat16", lora_dropout=p, fused_projections=fused,
                                    segment_mask=packed_rows).total
        rows[(run,)] = {"dropout": f"{p:g}", "packed rows": "yes" if packed_rows else "no",
                        "fused q/k/v, gate/up": "yes" if fused else "no",
                        "measured GB": gb(measured[run]), "predicted GB": gb(predicted),
                        "error": f"{100 * (predicted - measured[run]) / measured[run]:+.1f}%"}
    return rows

def whole_job_intro(j7):
    qlora7 = pick(j7["from_disk"], model="qwen2.5-7b", method="qlora")
    return [f"although its step needs {gb(qlora7['predicted'])} GB"]


def whole_job(j7, j72):
    def minift(r, seed_note=""):
        return {"seed's table": f"{r['target_GB']:g}{seed_note}", "predicted": gb(r["predicted"]),
                "measured whole job": f"**{gb(r['measured'])}**", "error": f"{r['error_pct']:+.1f}%",
                "peak phase": r["measured_peak_phase"], "load time": f"{r['load_s']:.1f} s"}
    qlora7 = pick(j7["from_disk"], model="qwen2.5-7b", method="qlora", load="nf4-stream", batch=4)
    anchor = pick(j7["from_disk"], anchor="transformers+bitsandbytes+peft")
    return {
        ("7B", "QLoRA, bf16 checkpoint quantized while it loads", "4x1024"): minift(qlora7),
        ("7B", "QLoRA, transformers + bitsandbytes + peft (anchor)", "4x1024"): {
            "seed's table": f"{qlora7['target_GB']:g}", "predicted": "-", "measured whole job": gb(anchor["peak"]),
            "error": "-", "load time": f"{anchor['load_s']:.1f} s"},
        ("7B", "LoRA, bf16", "4x1024"):
            minift(pick(j7["from_disk"], model="qwen2.5-7b", method="lora", load="float", batch=4)),
        ("14B", "QLoRA, quantized while it loads", "4x1024"):
            minift(pick(j7["from_disk"], model="qwen2.5-14b", method="qlora", load="nf4-stream", batch=4), " (13B)"),
        ("72B", "QLoRA, a pre-quantized bnb-4bit checkpoint (41 GB)", "4x1024"):
            minift(pick(j72["from_disk"], model="qwen2.5-72b", load="nf4-prequantized", batch=4), " (70B)"),
        ("72B", "QLoRA, the same", "1x1024"):
            minift(pick(j72["from_disk"], model="qwen2.5-72b", load="nf4-prequantized", batch=1), " (QLoRA paper)"),
    }


def whole_job_after(j7):
    qlora7 = pick(j7["from_disk"], model="qwen2.5-7b", method="qlora")
    anchor = pick(j7["from_disk"], anchor="transformers+bitsandbytes+peft")
    return [f"(7B: {gb(qlora7['predicted_phases']['load'])} predicted, {gb(qlora7['measured_phases']['load'])} "
            f"measured; it is not the peak)",
            f"({qlora7['load_s']:.1f} s vs {anchor['load_s']:.1f} s for 7B"]


def grid_row(r) -> dict:
    return {"predicted": gb(r["predicted"]), "measured": gb(r["measured"]), "error": f"{r['error_pct']:+.2f}%",
            "peak phase": r["peak_phase"]}


def memory_grid(grid, memory_py):
    rows = {}
    for r in grid["rows"]:
        key = (size_of(r["model"]), r["method"], f"{r['batch']}x{r['seq']}", "on" if r["grad_ckpt"] else "off")
        # the chapter's tables are at batch 4 x 1024
        seed = seed_total(memory_py, r["method"], key[0]) if key[2] == "4x1024" else "-"
        rows[key] = {"seed chapter": seed, **grid_row(r)}
    return rows


def memory_grid_after(grid):
    errors = [r["error_pct"] for r in grid["rows"]]
    largest = max(errors, key=abs)
    return [f"{len(errors)} rows, every one within {max(map(abs, errors)):.1f}% "
            f"(mean |error| {sum(map(abs, errors)) / len(errors):.1f}%)",
            f"the largest error is {largest:+.2f}%"]


def memory_quick(quick):
    def method(r):
        return r["method"] + (", bf16 adapter math" if r["lora_compute_dtype"] == "bfloat16" else "")
    return {(size_of(r["model"]), method(r), "on" if r["grad_ckpt"] else "off"): grid_row(r)
            for r in quick["rows"]}


def memory_quick_after(grid, quick):
    errors = [abs(r["error_pct"]) for r in quick["rows"]]
    before = pick(grid["rows"], model="Qwen/Qwen2.5-0.5B-Instruct", method="lora", batch=4, grad_ckpt=True)
    after = pick(quick["rows"], model="Qwen/Qwen2.5-0.5B-Instruct", method="lora", grad_ckpt=True,
                 lora_compute_dtype=None)
    lora7 = pick(grid["rows"], model="Qwen/Qwen2.5-7B-Instruct", method="lora", grad_ckpt=True)
    lora7_bf16 = pick(quick["rows"], model="Qwen/Qwen2.5-7B-Instruct", method="lora", grad_ckpt=True)
    return [f"{len(errors)} rows, mean |error| {sum(errors) / len(errors):.2f}%, max {max(errors):.2f}%",
            f"by {(before['measured'] - after['measured']) / 1e9:.3f} GB measured and by "
            f"{(before['predicted'] - after['predicted']) / 1e9:.3f} GB predicted ({gb(before['measured'])} -> "
            f"{gb(after['measured'])}, {gb(before['predicted'])} -> {gb(after['predicted'])})",
            f"(7B LoRA: {gb(lora7['measured'])} -> {gb(lora7_bf16['measured'])} GB measured)"]


# docs/speed.md

METHOD = {"lora": "LoRA", "qlora": "QLoRA"}


def strongest(gpu):
    rows = {}
    for r in gpu["results"]:
        ours, anchors = r["minift"], r["anchors"]
        mode = r["mode"] + (", bf16 adapters" if r["lora_compute"] == "bf16" else "")
        rows[(size_of(r["size"]), METHOD[r["method"]], mode)] = {
            "anchors (in order)": " / ".join(a["side"] for a in anchors)
                                  + (" (grad ckpt)" if r["mode"].startswith("lean") else ""),
            "minift peak GB": gb(ours["peak_bytes"]), "anchor peak GB": " / ".join(gb(a["peak_bytes"]) for a in anchors),
            "minift tok/s": tps(ours["tok_per_s"]), "anchor tok/s": " / ".join(tps(a["tok_per_s"]) for a in anchors),
            "speed x fastest": times(r["speed_ratio"]), "memory x leanest": times(r["memory_ratio"]),
            "minift MFU": pct(r["minift_mfu"])}
    return rows


def strongest_after(gpu, old7):
    r05, r7, lean = (pick(gpu["results"], size=s, method=m, mode=mode) for s, m, mode in
                     (("0.5b", "lora", "fast+compile+graph"), ("7b", "qlora", "fast+compile+graph"),
                      ("0.5b", "lora", "lean")))
    liger05 = pick(r05["anchors"], kind="liger+autocast")
    compiled05 = pick(r05["anchors"], kind="autocast+compile")
    ratios = ", ".join(f"{r['minift']['predicted_over_measured']:.2f}x" for r in (r05, r7))
    return [f"({gb(r05['minift']['peak_bytes'])} GB against Liger's {gb(liger05['peak_bytes'])})",
            f"**{times(r05['speed_ratio'])}** the fastest",
            f"ran {tps(compiled05['tok_per_s'])} tok/s in this run",
            f"at {times(r7['memory_ratio'])} the memory but **{times(r7['speed_ratio'])}** the speed",
            f"keeps its memory ({gb(lean['minift']['peak_bytes'])} GB)",
            f"predicted the three peaks at {ratios} and {lean['minift']['predicted_over_measured']:.2f}x"]


def qlora_operator(gpu, old7, profile):
    r7, before = pick(gpu["results"], size="7b", method="qlora")["minift"], old7["results"][0]["minift"]
    kinds = dict(re.findall(r"^\| (matmul|attention) \| ([\d.]+) \|", profile, re.M))
    dequant = re.search(r"^\| _nf4_dequantize_kernel \| ([\d.]+) \|", profile, re.M).group(1)
    head = re.search(r"GPU busy ([\d.]+) ms .*?, ([\d,]+) tok/s", profile)
    return [f"kept the memory down ({gb(before['peak_bytes'])} GB) but ran at {tps(before['tok_per_s'])} tok/s",
            f"both: {gb(r7['peak_bytes'])} GB at {tps(r7['tok_per_s'])} tok/s",
            f"that day: {head.group(2)} tok/s): matmuls {kinds['matmul']} ms of the {head.group(1)} ms",
            f"the NF4 dequantize {dequant} ms, attention {kinds['attention']} ms"]


def first_and_steady(side) -> tuple[str, str]:
    """The first step's and the steady step's seconds, as a recipe's compile line prints them."""
    return re.search(r"first step ([\d.]+) s .*steady step ([\d.]+) s", side["compile_line"]).groups()


def payback_steps(first_compiled, steady_compiled, first_eager, steady_eager, digits) -> str:
    """Steps after which compiling's one-time cost is paid back by its faster steps, rounded."""
    steps = (float(first_compiled) - float(first_eager)) / (float(steady_eager) - float(steady_compiled))
    return f"{round(steps, digits):,.0f}"


def recipe(rec, before, compile_default):
    m, warm, hf, compiled = rec["minift"], rec["minift_warm"], rec["hf"], rec["minift_compile"]
    first, steady = first_and_steady(m)
    c_first, c_steady = first_and_steady(compiled)
    return [f"**{tps(m['tok_per_s'])} tok/s** over the whole phase, HF {tps(hf['tok_per_s'])} tok/s: "
            f"**{times(rec['speed_ratio'])}**", f"The first step took {first} s", f"(steady step {steady} s)",
            f"{rec['steps']} steps of {rec['batch_size']} x {rec['seq_len']}",
            f"first step {first_and_steady(warm)[0]} s, **{tps(warm['tok_per_s'])} tok/s**, "
            f"**{times(rec['speed_ratio_warm'])}**",
            f"`--compile`: first step {c_first} s, steady step {c_steady} s, {tps(compiled['tok_per_s'])} tok/s, "
            f"{times(rec['speed_ratio_compile'])}; its compile pays back after about "
            f"{payback_steps(c_first, c_steady, first, steady, -2)} steps",
            f"{tps(compile_default['minift']['tok_per_s'])} tok/s against {tps(compile_default['hf']['tok_per_s'])}, "
            f"{times(compile_default['speed_ratio'])}, and {times(compile_default['speed_ratio_no_compile'])} with "
            f"`--no-compile`",
            f"the compiled steady step was {first_and_steady(before['minift'])[1]} s",
            f"{times(before['speed_ratio'])})",
            f"({tps(hf['tok_per_s'])} and {tps(compile_default['hf']['tok_per_s'])} tok/s)"]


def recipe_rerun(rec):
    m, warm, hf = rec["minift"], rec["minift_warm"], rec["hf"]
    return [f"minift **{tps(m['tok_per_s'])} tok/s**, HF {tps(hf['tok_per_s'])} tok/s: **{times(rec['speed_ratio'])}** "
            f"on a first run, **{times(rec['speed_ratio_warm'])}** warm, {times(rec['speed_ratio_compile'])} with",
            f"steady step {first_and_steady(m)[1]} s", f"**Rerun on {rec['date']}**"]


def recipe_final(rec, rerun, step, step_before):
    m, warm, hf = rec["minift"], rec["minift_warm"], rec["hf"]
    return [f"minift **{tps(m['tok_per_s'])} tok/s**, HF {tps(hf['tok_per_s'])} tok/s: **{times(rec['speed_ratio'])}** "
            f"on a first run, **{times(rec['speed_ratio_warm'])}** warm, {times(rec['speed_ratio_compile'])} with",
            f"steady step {first_and_steady(m)[1]} s, against {first_and_steady(rerun['minift'])[1]} s in the rerun",
            f"{wall_ms(step)} ms at {peak_gb(step)} GB, where it was {wall_ms(step_before)} ms at {peak_gb(step_before)} GB",
            f"(later on {rec['date']},"]


def log_seconds(log: str, start: str, end: str) -> str:
    """Seconds between the first log line holding `start` and the next holding `end`, one decimal."""
    stamps = re.findall(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?(" + re.escape(start) + "|" + re.escape(end) + ")",
                        log, flags=re.M)
    t0 = next(t for t, what in stamps if what == start)
    t1 = next(t for t, what in stamps if what == end and t > t0)
    seconds = (datetime.datetime.strptime(t1, "%Y-%m-%d %H:%M:%S,%f")
               - datetime.datetime.strptime(t0, "%Y-%m-%d %H:%M:%S,%f")).total_seconds()
    return f"{seconds:.1f}"


def when_compiling_pays(q7_graph, q7_compiled, l05_graph, l05_compiled, log_compiled_eval, log_eager_eval,
                        compile_default, first_layer_eager):
    def row(d):
        return d["results"][0]["minift"]
    g7, c7, g05, c05 = row(q7_graph), row(q7_compiled), row(l05_graph), row(l05_compiled)
    before, after = first_and_steady(compile_default["minift"]), first_and_steady(first_layer_eager["minift_compile"])
    return [f"7B QLoRA {g7['step_s']:.3f} s eager with the graph against {c7['step_s']:.3f} s compiled, first step "
            f"{g7['first_step_s']:.1f} s against {c7['first_step_s']:.1f} s, so compiling pays back after about "
            f"{payback_steps(c7['first_step_s'], c7['step_s'], g7['first_step_s'], g7['step_s'], -1)} steps",
            f"0.5B LoRA {g05['step_s']:.4f} s against {c05['step_s']:.4f} s, first step {g05['first_step_s']:.1f} s "
            f"against {c05['first_step_s']:.1f} s: about "
            f"{payback_steps(c05['first_step_s'], c05['step_s'], g05['first_step_s'], g05['step_s'], -1)} steps",
            f"{log_seconds(log_compiled_eval, 'step 300/300', 'eval loss')} s for two batches",
            f"({log_seconds(log_eager_eval, 'step 300/300', 'eval loss')} s)",
            f"first step went from {before[0]} to {after[0]} s", f"steady step from {before[1]} to {after[1]} s"]


def anchor_variance(gpu, earlier):
    r05 = pick(gpu["results"], size="0.5b", method="lora", mode="fast+compile+graph")
    r7 = pick(gpu["results"], size="7b", method="qlora")
    e05 = pick(earlier["results"], size="0.5b", method="lora", mode="fast+compile+graph")
    e7 = pick(earlier["results"], size="7b", method="qlora")
    a7, ea7 = r7["anchors"][0], e7["anchors"][0]
    return [f"7B QLoRA step at {tps(e7['minift']['tok_per_s'])} tok/s against {tps(ea7['tok_per_s'])} for the "
            f"same HF stack: {times(e7['speed_ratio'])}, where the run above measured that anchor at "
            f"{tps(a7['tok_per_s'])}",
            f"Liger's 0.5B anchor ran {tps(pick(e05['anchors'], kind='liger+autocast')['tok_per_s'])} there and "
            f"{tps(pick(r05['anchors'], kind='liger+autocast')['tok_per_s'])} here",
            f"between {times(r7['speed_ratio'])} and {times(e7['speed_ratio'])}"]


def wall_ms(profile: str) -> str:
    return re.search(r"wall ([\d.]+) ms/step", profile).group(1)


def peak_gb(profile: str) -> str:
    return re.search(r"peak ([\d.]+) GB", profile).group(1)


def fused_step(fused, unfused, cat, probe):
    small = probe["0.5b"]
    return [f"q/k/v {small['qkv_fused_forward']:.3f} ms fused against {small['qkv_separate_forward']:.3f} forward",
            f"x @ A^T {small['adapter_down_2_stacked']:.3f} ms stacked against {small['adapter_down_5_separate']:.3f}",
            f"{wall_ms(fused)} ms against {wall_ms(unfused)} ms, "
            f"{100 * (1 - float(wall_ms(fused)) / float(wall_ms(unfused))):.0f}%",
            f"slower than not fusing ({wall_ms(cat)} ms)"]


def capstone_step(docs, dropout, both, both_fused):
    attention = re.search(r"^\| attention \| ([\d.]+) \|", docs, re.M).group(1)
    return [f"the mask alone made the step {wall_ms(docs)} ms", f"attention {attention} ms",
            f"dropout alone {wall_ms(dropout)} ms at a peak of {peak_gb(dropout)} GB",
            f"both {wall_ms(both)} ms at {peak_gb(both)} GB",
            f"both, {wall_ms(both_fused)} ms at {peak_gb(both_fused)} GB"]


def fused_experiment(kept, tried):
    return [f"({wall_ms(kept)} -> {wall_ms(tried)} ms"]


def adapters_in_matmul(before, function, operator, bench_before, bench_function):
    r05 = {k: pick(b["results"], size="0.5b", method="lora", mode="fast+compile+graph")
           for k, b in (("before", bench_before), ("function", bench_function))}
    r7 = [pick(b["results"], size="7b", method="qlora") for b in (bench_before, bench_function)]
    compiled = {k: pick(r["anchors"], kind="autocast+compile")["tok_per_s"] for k, r in r05.items()}
    liger = pick(r05["function"]["anchors"], kind="liger+autocast")
    return [f"{wall_ms(before)} ms before; {wall_ms(function)} ms as a first version",
            f"at a peak of {peak_gb(function)} GB against {peak_gb(before)}",
            f"{wall_ms(operator)} ms at {peak_gb(operator)} GB as a pair",
            f"before, 0.5B LoRA {tps(r05['before']['minift']['tok_per_s'])} tok/s against {tps(compiled['before'])} "
            f"for compiled HF + peft: {times(r05['before']['speed_ratio'])} at {gb(r05['before']['minift']['peak_bytes'])} GB",
            f"with the first version {tps(r05['function']['minift']['tok_per_s'])} against {tps(compiled['function'])}: "
            f"{times(r05['function']['speed_ratio'])}, but at {gb(r05['function']['minift']['peak_bytes'])} GB, over "
            f"Liger's {gb(liger['peak_bytes'])}",
            f"measured {times(r7[0]['speed_ratio'])} and {times(r7[1]['speed_ratio'])} in the same two runs "
            f"({tps(r7[0]['minift']['tok_per_s'])} against {tps(r7[0]['anchors'][0]['tok_per_s'])}; "
            f"{tps(r7[1]['minift']['tok_per_s'])} against {tps(r7[1]['anchors'][0]['tok_per_s'])})"]


def final_code(final, profile, profile2, run1, run2, run3):
    """The final code's run beside the three earlier runs of the same 0.5B row (their anchors moved)."""
    r05, r7 = pick(final["results"], size="0.5b", method="lora", mode="fast+compile+graph"), \
        pick(final["results"], size="7b", method="qlora")
    compiled, liger = (pick(r05["anchors"], kind=k) for k in ("autocast+compile", "liger+autocast"))
    earlier = [pick(r["results"], size="0.5b", method="lora", mode="fast+compile+graph") for r in (run1, run2, run3)]
    sides = [*earlier, r05]
    three_x = 3 * compiled["tok_per_s"]
    matmul_ms = re.search(r"\| matmul \| ([\d.]+) \|", profile).group(1)
    lean = pick(final["results"], size="0.5b", method="lora", mode="lean")
    return [f"0.5B LoRA **{tps(r05['minift']['tok_per_s'])} tok/s** at {gb(r05['minift']['peak_bytes'])} GB",
            f"{tps(compiled['tok_per_s'])} for compiled HF + peft and {tps(liger['tok_per_s'])} for HF + peft + "
            f"Liger ({gb(liger['peak_bytes'])} GB): **{times(r05['speed_ratio'])}** the fastest at "
            f"{times(r05['memory_ratio'])} the leanest's memory, {pct(r05['minift_mfu'])} MFU",
            f"7B QLoRA {tps(r7['minift']['tok_per_s'])} against {tps(r7['anchors'][0]['tok_per_s'])} tok/s: "
            f"**{times(r7['speed_ratio'])}**, at {gb(r7['minift']['peak_bytes'])} GB",
            f"{wall_ms(profile)} ms at {peak_gb(profile)} GB ({wall_ms(profile2)} ms on a",
            f"memory.estimate predicts {gb(r05['minift']['predicted_peak_bytes'])}",
            "side read " + ", ".join(tps(r["minift"]["tok_per_s"]) for r in sides[:-1]) +
            f" and {tps(sides[-1]['minift']['tok_per_s'])} tok/s, the compiled HF anchor " +
            ", ".join(tps(pick(r["anchors"], kind="autocast+compile")["tok_per_s"]) for r in sides[:-1]) +
            f" and {tps(compiled['tok_per_s'])}",
            f"3x would be {tps(three_x)} tok/s, {pct(r05['minift_mfu'] * three_x / r05['minift']['tok_per_s'])} MFU",
            f"matmuls alone take {matmul_ms} ms of the {wall_ms(profile)}",
            f"the lean row of the same run read {times(lean['speed_ratio'])}"]


def next_milliseconds(profile, kernels):
    """The two backward kernels' cost from the profile, their sizes from the compiler's own source."""
    def kernel(prefix):
        ms, calls = re.search(rf"\| {prefix}\w* \| ([\d.]+) \| (\d+) \|", profile).groups()
        return float(ms), int(calls)
    swiglu_ms, layers = kernel("triton_poi_fused_add_cat_mul_silu_silu_backward")
    rope_ms, _ = kernel("triton_poi_fused__unsafe_view_add_cat_clone_mul_neg_slice")
    numels = [int(n) for n in re.findall(r"xnumel = (\d+)", kernels)]
    pairs = numels[0] // 2                              # (d gate, d up) per token and column
    as_is, needed = pairs * (7 + 2) * 2, pairs * (4 + 2) * 2   # bf16 loads + stores, bytes
    per_call = swiglu_ms / layers / 1e3                 # s
    rate = as_is / per_call
    ideal_us = needed / rate * 1e6
    return [f"takes {swiglu_ms:.2f} ms a step, {per_call * 1e6:.0f} µs a layer",
            f"each of its {numels[0]:,} elements", f"{as_is / 1e6:.0f} MB a layer where {needed / 1e6:.0f} MB would do",
            f"already {rate / 1e12:.1f} TB/s", f"about {ideal_us:.0f} µs, "
            f"{(per_call * 1e6 - ideal_us) * layers / 1e3:.1f} ms a step less",
            f"takes {rope_ms:.2f} ms, {rope_ms / layers * 1e3:.0f} µs a layer for {numels[1]:,} outputs",
            f"{wall_ms(profile)} ms a step", f"of the {wall_ms(profile)}, "]


def cat_lowering(pointwise, concat_kernel):
    return [f"{wall_ms(concat_kernel)} ms a step against {wall_ms(pointwise)} ms with the default, at the same "
            f"{peak_gb(pointwise)} GB"] + ([] if peak_gb(pointwise) == peak_gb(concat_kernel) else ["(peaks differ)"])


def rope_operator_tried(profiles):
    def section(name):
        return profiles.split(f"## {name}\n", 1)[1]
    def kernels(name):
        count = int(re.search(r"(\d+) kernels/step", section(name)).group(1))
        return f"{count:,}"
    assert peak_gb(section("new_graph")) == peak_gb(section("old_graph"))
    return [f"the graphed step {wall_ms(section('new_graph'))} ms against {wall_ms(section('old_graph'))} ms "
            f"without it, {kernels('new_graph')} kernels a step against {kernels('old_graph')}, at the same "
            f"{peak_gb(section('old_graph'))} GB",
            f"{wall_ms(section('new_compile'))} ms against {wall_ms(section('old_compile'))} ms"]


def profile_row_ms(profile: str, name: str) -> str:
    """The ms/step of one row of a profile's tables (a kind, or a kernel whose name starts so)."""
    return re.search(rf"^\| {re.escape(name)}[^|]* \| ([\d.]+) \|", profile, re.M).group(1)


def nf4_groups(fused, unfused):
    def busy(profile):
        return re.search(r"GPU busy ([\d.]+) ms", profile).group(1)

    def kernels(profile):
        count = int(re.search(r"(\d+) kernels/step", profile).group(1))
        return f"{count:,}"
    return [f"**{wall_ms(fused)} ms** a step against {wall_ms(unfused)} ms, the GPU busy {busy(fused)} ms against "
            f"{busy(unfused)}, {kernels(fused)} kernels a step against {kernels(unfused)}, at a peak of "
            f"{peak_gb(fused)} GB against {peak_gb(unfused)}",
            f"The matmuls took {profile_row_ms(fused, 'matmul')} ms against {profile_row_ms(unfused, 'matmul')}",
            f"SwiGLU's forward (which had added the two updates) {profile_row_ms(fused, 'triton_poi_fused_mul_silu')} ms "
            f"against {profile_row_ms(unfused, 'triton_poi_fused__unsafe_view_add_mul_silu')}",
            f"the dequantize took {profile_row_ms(fused, '_nf4_dequantize_kernel')} ms against "
            f"{profile_row_ms(unfused, '_nf4_dequantize_kernel')}",
            f"copying each projection's b into its matrix "
            f"{profile_row_ms(fused, 'void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<at::native::direct_copy_kernel_')} ms"]


def in_rounds(r7_run, r05_run):
    r7, r05 = r7_run["results"][0], r05_run["results"][0]

    def spread(side):
        return f"{tps(min(side['runs_tok_per_s']))}-{tps(max(side['runs_tok_per_s']))}"

    def rounds(r):
        *first, last = [times(x) for x in r["speed_ratio_rounds"]]
        return ", ".join(first) + f" and {last}"
    anchor7 = r7["anchors"][0]
    compiled, liger = pick(r05["anchors"], kind="autocast+compile"), pick(r05["anchors"], kind="liger+autocast")
    assert r7["fastest_anchor"] == anchor7["side"] and r05["fastest_anchor"] == compiled["side"]
    return [f"minift **{tps(r7['minift']['tok_per_s'])} tok/s** ({spread(r7['minift'])} over the rounds) against "
            f"{tps(anchor7['tok_per_s'])} ({spread(anchor7)}) for HF + peft + bitsandbytes + Liger under autocast: "
            f"**{times(r7['speed_ratio'])}**, the rounds {rounds(r7)}, at {gb(r7['minift']['peak_bytes'])} GB against "
            f"{gb(anchor7['peak_bytes'])} ({times(r7['memory_ratio'])}; memory.estimate "
            f"{r7['minift']['predicted_over_measured']:.3f}x of the measured peak)",
            f"0.5B LoRA: {tps(r05['minift']['tok_per_s'])} tok/s ({spread(r05['minift'])}) against "
            f"{tps(compiled['tok_per_s'])} ({spread(compiled)}) for compiled HF + peft and {tps(liger['tok_per_s'])} "
            f"for HF + peft + Liger at {gb(liger['peak_bytes'])} GB: **{times(r05['speed_ratio'])}**, the rounds "
            f"{rounds(r05)}, at {gb(r05['minift']['peak_bytes'])} GB ({times(r05['memory_ratio'])} the leanest)"]


def cpt_grad_accum(graph, no_graph):
    def tok_s(log):
        return re.search(r"^training: ([\d,]+) tok/s", log, re.M).group(1)

    def loss(log):
        return re.findall(r"\| loss ([\d.]+) \|", log)[-1]
    first, steady = re.search(r"first step ([\d.]+) s .*steady step ([\d.]+) s", graph).groups()
    ratio = int(tok_s(graph).replace(",", "")) / int(tok_s(no_graph).replace(",", ""))
    return [f"**{tok_s(graph)} tok/s** over the training phase with the graph (first step {first} s, steady step "
            f"{steady} s) against {tok_s(no_graph)} tok/s with `--no-cuda-graph`: **{times(ratio)}**, ending at loss "
            f"{loss(graph)} and {loss(no_graph)}"]


def more_rounds(two, three):
    r2, r3 = two["results"][0], three["results"][0]
    a2, a3 = r2["anchors"][0], r3["anchors"][0]
    m_runs, a_runs = r2["minift"]["runs_tok_per_s"], a2["runs_tok_per_s"]
    rounds = r2["speed_ratio_rounds"] + r3["speed_ratio_rounds"]
    minift_all, anchor_all = m_runs + r3["minift"]["runs_tok_per_s"], a_runs + a3["runs_tok_per_s"]
    return [f"minift {tps(m_runs[0])} and {tps(m_runs[1])} tok/s against {tps(a_runs[0])} and {tps(a_runs[1])}",
            f"the rounds {times(r2['speed_ratio_rounds'][0])} and {times(r2['speed_ratio_rounds'][1])}",
            f"so this run reports **{times(r2['speed_ratio'])}**, at {gb(r2['minift']['peak_bytes'])} GB against "
            f"{gb(a2['peak_bytes'])}",
            f"the ratio read {times(min(rounds))} to {times(max(rounds))}, "
            f"{['no', 'one', 'two', 'three', 'four', 'five'][sum(x >= 1.5 for x in rounds)]} of the five at 1.5x or more",
            f"minift's side moved {tps(min(minift_all))}-{tps(max(minift_all))} tok/s, the anchor's "
            f"{tps(min(anchor_all))}-{tps(max(anchor_all))}"]


def nf4_wide_tried(probe1, probe2, align1, align64, inside1, outside1, inside2, outside2):
    g1, g2 = probe1["gate_or_up"], probe2["gate_or_up"]

    def ms(x):
        return f"{x:.4f}"
    return [f"rows {g1['wide']['row_stride_elements']:,} wide took {ms(g1['wide']['dequantize'])} ms against "
            f"{ms(g1['unfused']['dequantize'])}",
            f"{ms(g2['wide']['dequantize'])} against {ms(g2['unfused']['dequantize'])} on the second",
            f"({ms(g1['padded']['dequantize'])}, {ms(g2['padded']['dequantize'])})",
            f"K = 3,616 took {ms(g1['wide']['forward'])} ms against {ms(g1['unfused']['forward'])}",
            f"({ms(g2['wide']['forward'])} against {ms(g2['unfused']['forward'])} on the second machine)",
            f"3,648: {ms(g2['zero_k']['forward'])}; 3,712: {ms(g2['zero_k128']['forward'])}",
            f"padded, {wall_ms(align64)} ms against {wall_ms(align1)} without",
            f"inside), {wall_ms(outside1)} and {wall_ms(outside2)} ms against {wall_ms(inside1)} and "
            f"{wall_ms(inside2)} with all inside"]


def qlora_recipe(fused, unfused):
    f, u = recipe_log(fused), recipe_log(unfused)
    return [f"steady step **{f['steady']} s** against {u['steady']} s, at a measured peak of {f['measured']} GiB "
            f"against {u['measured']} (memory.estimate: {f['predicted']} and {u['predicted']})",
            f"whole training phase {f['tok_s']} against {u['tok_s']} tok/s",
            f"first step took {f['first']} s against {u['first']}"]


def profile_runs(log: str) -> dict:
    """A driver log of profiles: "== TAG SECONDSs" lines, each followed by that run's first line."""
    return dict(re.findall(r"^== (\S+) \d+s\n(.+)$", log, re.M))


def profile_kernels(profile: str) -> str:
    count = int(re.search(r"(\d+) kernels/step", profile).group(1))
    return f"{count:,}"


def bench_log_rounds(log: str) -> list[tuple[int, ...]]:
    """bench_train.py --repeats: each round's line, minift's tok/s then each anchor's, as printed."""
    lines = re.findall(r"^round \d+/\d+ of .*$", log, re.M)
    return [tuple(int(x.replace(",", "")) for x in re.findall(r"([\d,]+) tok/s", line)) for line in lines]


def upper_median(values) -> int:      # bench.median_run's rule: the upper middle of an even count
    return sorted(values)[len(values) // 2]


def graph_plain_replay(prof_log, profile7b, bench_log, nf4_before, morning):
    runs = profile_runs(prof_log)
    new, old = (runs["new1"], runs["new2"]), (runs["zeroing1"], runs["zeroing2"])
    assert len({peak_gb(r) for r in new}) == 1 and len({peak_gb(r) for r in old}) == 1
    rounds = bench_log_rounds(bench_log)
    minift, compiled = (upper_median([r[i] for r in rounds]) for i in range(2))
    row = re.search(r"^\| 0\.5b \| lora \|.*\| ([\d.]+) / ([\d.]+) \|.*\| ([\d.]+) \| ([\d.]+) \| [\d.]+% \|$",
                    bench_log, re.M)
    minift_gb = re.search(r"\| ([\d.]+) \| [\d.]+ / [\d.]+ \|", bench_log).group(1)
    assert f"{minift / compiled:.2f}" == row.group(3)
    morning_anchor = pick(morning["results"][0]["anchors"], kind="autocast+compile")["runs_tok_per_s"]
    return [f"**{wall_ms(new[0])} and {wall_ms(new[1])} ms** a step against {wall_ms(old[0])} and {wall_ms(old[1])} ms "
            f"with the adds, {profile_kernels(new[0])} kernels a step against {profile_kernels(old[0])}, at "
            f"{peak_gb(new[0])} GB against {peak_gb(old[0])}",
            f"{wall_ms(profile7b)} ms, {profile_kernels(profile7b)} kernels a step, the NF4 dequantize "
            f"{profile_row_ms(profile7b, '_nf4_dequantize_kernel')} ms a step against "
            f"{profile_row_ms(nf4_before, '_nf4_dequantize_kernel')}",
            f"minift {tps(rounds[0][0])} and {tps(rounds[1][0])} tok/s against {tps(rounds[0][1])} and "
            f"{tps(rounds[1][1])} for compiled HF + peft and {tps(rounds[0][2])} and {tps(rounds[1][2])} for HF + peft + "
            f"Liger: **{times(minift / compiled)}** by the medians (the rounds {times(rounds[0][0] / rounds[0][1])} and "
            f"{times(rounds[1][0] / rounds[1][1])}), at {minift_gb} GB against Liger's {row.group(2)} ({row.group(4)}x)",
            f"Its anchor ran {tps(min(r[1] for r in rounds))}-{tps(max(r[1] for r in rounds))} tok/s here against "
            f"{tps(min(morning_anchor))}-{tps(max(morning_anchor))} in the morning's rounds, against which this step "
            f"would read {minift / max(morning_anchor):.1f}x-{minift / min(morning_anchor):.1f}x"]


def branches_landed(host_jsonl, probe_log, lean_run):
    host = [json.loads(line) for line in host_jsonl.splitlines() if line.startswith("{")]
    before, after = host[0::2], host[1::2]
    probes = dict(re.findall(r"^== (\S+) \d+s\n((?:(?!==).*\n)+)", probe_log, re.M))

    def dequant(tree, shape, layout):
        line = re.search(rf"^{shape}\s+{layout}\s+(\{{.*\}})$", probes[tree], re.M).group(1)
        return f"{json.loads(line)['dequantize']:.4f}"
    r = lean_run["results"][0]
    anchor = r["anchors"][0]
    return [f"q matrix {dequant('main', 'q', 'wide')} -> {dequant('nf4', 'q', 'wide')} ms, k/v "
            f"{dequant('main', 'k_or_v', 'wide')} -> {dequant('nf4', 'k_or_v', 'wide')}, gate/up "
            f"{dequant('main', 'gate_or_up', 'wide')} -> {dequant('nf4', 'gate_or_up', 'wide')} (the plain dequantize "
            f"{dequant('main', 'gate_or_up', 'unfused')} and {dequant('nf4', 'gate_or_up', 'unfused')}",
            f"{before[0]['step_s']:.3f} and {before[1]['step_s']:.3f} s a step before, {after[0]['step_s']:.3f} and "
            f"{after[1]['step_s']:.3f} s after, at {after[0]['peak_bytes'] / 1e9:.2f} GB against "
            f"{before[0]['peak_bytes'] / 1e9:.2f}",
            f"minift {tps(r['minift']['runs_tok_per_s'][0])} and {tps(r['minift']['runs_tok_per_s'][1])} tok/s against "
            f"{tps(anchor['runs_tok_per_s'][0])} and {tps(anchor['runs_tok_per_s'][1])} for HF + peft with checkpointing: "
            f"**{times(r['speed_ratio'])}** by the medians (the rounds {times(r['speed_ratio_rounds'][0])} and "
            f"{times(r['speed_ratio_rounds'][1])}), at {gb(r['minift']['peak_bytes'])} GB against {gb(anchor['peak_bytes'])}"]


def anchors_wait(step_times, profiles, bench7b, profile05, profile7b, recipe_log, same_profile, same_anchor):
    """The anchors' step times and GPU busy time (anchor_hf.py --profile), the 7B row's rounds."""
    steps = [json.loads(line) for line in step_times.splitlines() if line.startswith("{")]
    anchor, ours = steps[0::2], steps[1::2]
    assert [s["side"] for s in ours] == ["minift", "minift"]
    steady_ms = lambda s: (f"{min(s['step_times_s'][2:]) * 1e3:.1f}", f"{max(s['step_times_s'][2:]) * 1e3:.1f}")  # noqa: E731
    first_six = [4096 / upper_median(s["step_times_s"][2:6]) for s in anchor]
    prof = [json.loads(line) for line in profiles.splitlines() if line.startswith("{")]
    compiled = [p for p in prof if p["compile"]]
    liger05 = pick([p for p in prof if p["size"] == "0.5b"], compile=False)
    qlora7b = pick(prof, size="7b")
    ms = lambda x: f"{x * 1e3:.1f}"  # noqa: E731
    busy05 = float(re.search(r"GPU busy ([\d.]+) ms", profile05).group(1))
    assert ms(compiled[0]["gpu_busy_s"]) == ms(compiled[1]["gpu_busy_s"])
    r = bench7b["results"][0]
    matmul7b = profile_row_ms(profile7b, "matmul")
    steady = re.search(r"steady step ([\d.]+) s", recipe_log).group(1)
    same_busy_anchor = json.loads(same_anchor)["gpu_busy_s"]          # one machine, one after the other
    same_busy_ours = re.search(r"GPU busy ([\d.]+) ms", same_profile).group(1)
    measured = re.search(r"predicted peak ([\d.]+) GiB, measured ([\d.]+) GiB", recipe_log)
    return [f"{steady_ms(anchor[0])[0]}-{steady_ms(anchor[0])[1]} ms in its first process and "
            f"{steady_ms(anchor[1])[0]}-{steady_ms(anchor[1])[1]} ms in its second, medians "
            f"{tps(anchor[0]['tok_per_s'])} and {tps(anchor[1]['tok_per_s'])} tok/s, while minift's fast 0.5B step took "
            f"{min(steady_ms(s)[0] for s in ours)}-{max(steady_ms(s)[1] for s in ours)} ms in both "
            f"({tps(ours[0]['tok_per_s'])} and {tps(ours[1]['tok_per_s'])} tok/s): "
            f"{times(ours[0]['tok_per_s'] / anchor[0]['tok_per_s'])} and {times(ours[1]['tok_per_s'] / anchor[1]['tok_per_s'])}",
            f"is {tps(first_six[0])} and {tps(first_six[1])}",
            f"busy {ms(compiled[0]['gpu_busy_s'])} ms of an {ms(compiled[0]['step_s'])} ms step "
            f"({ms(compiled[1]['gpu_busy_s'])} of {ms(compiled[1]['step_s'])} in the second process; "
            f"{compiled[0]['kernels_per_step']:,.0f} kernels a step), Liger's {ms(liger05['gpu_busy_s'])} of "
            f"{ms(liger05['step_s'])} ms ({liger05['kernels_per_step']:,.0f} kernels), where the 7B QLoRA anchor's was "
            f"busy {ms(qlora7b['gpu_busy_s'])} of {ms(qlora7b['step_s'])} ms",
            f"{ms(compiled[0]['gpu_busy_s'])} ms a step for compiled HF + peft against {busy05} ms for minift's graphed "
            f"step (its profile above, another machine): {times(compiled[0]['gpu_busy_s'] * 1e3 / busy05)}",
            f"minift {tps(r['minift']['runs_tok_per_s'][0])} and {tps(r['minift']['runs_tok_per_s'][1])} tok/s against "
            f"{tps(r['anchors'][0]['runs_tok_per_s'][0])} and {tps(r['anchors'][0]['runs_tok_per_s'][1])}: "
            f"**{times(r['speed_ratio'])}** by the medians (the rounds {times(r['speed_ratio_rounds'][0])} and "
            f"{times(r['speed_ratio_rounds'][1])}), at {gb(r['minift']['peak_bytes'])} GB against "
            f"{gb(r['anchors'][0]['peak_bytes'])}",
            f"(`same_machine_*` there), {ms(same_busy_anchor)} against {same_busy_ours} ms: "
            f"{times(same_busy_anchor * 1e3 / float(same_busy_ours))} again",
            f"{pct(r['minift_mfu'])} MFU by the benchmark's count, and its matmuls alone take {matmul7b} of its "
            f"{wall_ms(profile7b)} ms",
            f"steady step {steady} s, {measured.group(2)} GiB measured against {measured.group(1)} predicted"]


def gate_up_interleaved(inter1, inter2, blocks1, blocks2, inter_docs, blocks_docs):
    swiglu_bwd, swiglu_fwd = "triton_poi_fused_add_mul_silu_silu_backward_stack", "triton_poi_fused_mul_silu_unbind"
    return [f"interleaved {wall_ms(inter1)} and {wall_ms(inter2)} ms a step against {wall_ms(blocks1)} and "
            f"{wall_ms(blocks2)} ms in blocks", f"{wall_ms(inter_docs)} against {wall_ms(blocks_docs)}",
            f"The SwiGLU backward took {profile_row_ms(inter1, swiglu_bwd)} ms against "
            f"{profile_row_ms(blocks1, 'triton_poi_fused_add_cat_mul_silu_silu_backward')}, its forward "
            f"{profile_row_ms(inter1, swiglu_fwd)} against {profile_row_ms(blocks1, 'triton_poi_fused_mul_silu_split')}"]


def recipe_log(log: str) -> dict:
    """The numbers lora_qwen.py prints about its training phase."""
    graphed = re.search(r"first step ([\d.]+) s .*steady step ([\d.]+) s", log)   # printed only with the graph on
    first, steady = graphed.groups() if graphed else (None, None)
    tok_s = re.search(r"^training: \d+ s, ([\d,]+) tok/s", log, re.M).group(1)
    predicted, measured = re.search(r"^memory: predicted peak ([\d.]+) GiB, measured ([\d.]+) GiB", log, re.M).groups()
    return dict(first=first, steady=steady, tok_s=tok_s, loss=re.findall(r"\| loss ([\d.]+) \|", log)[-1],
                predicted=predicted, measured=measured)


def grad_accum_graph(graph, no_graph, plain):
    g, n, p = recipe_log(graph), recipe_log(no_graph), recipe_log(plain)
    assert g["predicted"] == n["predicted"]
    ratio = int(g["tok_s"].replace(",", "")) / int(n["tok_s"].replace(",", ""))
    return [f"**{g['tok_s']} tok/s** over the training phase (first step {g['first']} s, steady step {g['steady']} s "
            f"for two micro-batches) against {n['tok_s']} tok/s", f"**{times(ratio)}**",
            f"{p['tok_s']} tok/s, steady step {p['steady']} s", f"loss {g['loss']} and {n['loss']}",
            f"peak of {g['measured']} and {n['measured']} GiB (memory.estimate: {g['predicted']} GiB)"]


def lean_host_bound(final, first, scripted, cprofile, graphed):
    lines = [json.loads(line) for line in first.splitlines() if line.strip()]
    default, unfused, reference, hf = lines
    (script_run,) = [json.loads(line) for line in scripted.splitlines() if line.strip()]
    g = graphed["results"][0]
    ours, anchor = g["minift"], g["anchors"][0]
    calls = {name: int(re.search(rf"^\s+(\d+)\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+ .*{re.escape(name)}", cprofile,
                                 flags=re.M).group(1)) for name in ("jit.py:695(run)", "(unpack_hook)")}
    engine = re.search(r"^\s+3\s+([\d.]+) .*'run_backward'", cprofile, flags=re.M).group(1)
    lean = pick(final["results"], size="0.5b", method="lora", mode="lean")
    return [f"read {times(lean['speed_ratio'])} in the run above",
            f"({default['step_s']:.4f} / {default['host_s']:.4f} s with a first version of the script; "
            f"{script_run['step_s']:.4f} / {script_run['host_step_s']:.4f} s on the other machine, "
            f"{tps(script_run['tok_per_s'])} tok/s)",
            f"({anchor['step_s']:.4f} / {anchor['host_step_s']:.4f} s;",
            f"On the machine that ran {tps(default['tok_per_s'])} tok/s, HF + peft ran {tps(hf['tok_per_s'])}: "
            f"{times(default['tok_per_s'] / hf['tok_per_s'])}",
            f"unfused the step read {tps(unfused['tok_per_s'])} tok/s",
            f"instead of minift's Triton kernels {tps(reference['tok_per_s'])}",
            f"{calls['jit.py:695(run)']:,} Triton launches", f"{calls['(unpack_hook)']:,} unpacks",
            f"and {engine} s in the autograd engine",
            f"read **{tps(ours['tok_per_s'])} tok/s** at {gb(ours['peak_bytes'])} GB (memory.estimate: "
            f"{gb(ours['predicted_peak_bytes'])})",
            f"its host part {ours['host_step_s'] * 1e3:.1f} ms of an {ours['step_s'] * 1e3:.1f} ms step, against "
            f"{tps(anchor['tok_per_s'])} tok/s",
            f"**{times(g['speed_ratio'])}** at {times(g['memory_ratio'])} its memory"]


def speed_fast(run1, run2):
    rows = {}
    for run, result in ((1, run1), (2, run2)):
        for r in result["results"]:
            plain, autocast = r["anchor"], r["anchor_autocast"]
            rows[(size_of(r["size"]), METHOD[r["method"]], str(run))] = {
                "minift peak GB": gb(r["minift"]["peak_bytes"]),
                "anchor peak GB (plain / autocast)": f"{gb(plain['peak_bytes'])} / {gb(autocast['peak_bytes'])}",
                "minift tok/s": tps(r["minift"]["tok_per_s"]),
                "anchor tok/s (plain / autocast)": f"{tps(plain['tok_per_s'])} / {tps(autocast['tok_per_s'])}",
                "speed": times(r["speed_ratio"]), "minift MFU": pct(r["minift_mfu"])}
    return rows


def speed_fast_after(run1, run2, no_graph):
    q7 = [pick(run["results"], size="7b", method="qlora") for run in (run1, run2)]
    ours = no_graph["results"][0]["minift"]
    return [f"freshly started H200 machines on {run1['stamp'][:10]} and {run2['stamp'][:10]}",
            f"{span([r['minift']['tok_per_s'] / r['anchor']['tok_per_s'] for r in q7], '.2f')}x the anchor as "
            f"`shared/anchors.md` defines it",
            f"only {span([r['speed_ratio'] for r in q7], '.2f')}x the same stack under autocast",
            f"({tps(q7[0]['minift']['tok_per_s'])} / {tps(q7[1]['minift']['tok_per_s'])} tok/s)",
            f"ran {tps(ours['tok_per_s'])} tok/s at {gb(ours['peak_bytes'])} GB"]


PROFILE_HEAD = re.compile(r"wall ([\d.]+) ms/step, GPU busy ([\d.]+) ms \((\d+)%\)")


def speed_profile(compiled05, graph05, compiled7, bf16_7):
    """The first line of each scripts/profile_step.py output; the table's words are read off its kernel lists."""
    rows = {}
    for key, text in (("0.5B LoRA, compiled layers, fp32 adapters", compiled05),
                      ("the same as one CUDA graph", graph05),
                      ("7B QLoRA, compiled layers, fp32 adapters", compiled7),
                      ("7B QLoRA, bf16 adapters", bf16_7)):
        wall, busy, share = PROFILE_HEAD.search(text).groups()
        rows[(key,)] = {"wall ms": wall, "GPU busy ms": f"{busy} ({share}%)"}
    return rows


def speed_profile_after(run2, graph_fp32, old_loss):
    step = {r["size"]: r["minift"]["step_s"] for r in run2["results"]}
    g, o = graph_fp32["results"][0], old_loss["results"][0]
    return [f"the 0.5B step takes {1000 * step['0.5b']:.0f} ms and the 7B QLoRA step {1000 * step['7b']:.0f} ms",
            f"{tps(g['minift']['tok_per_s'])} vs {tps(g['anchor']['tok_per_s'])} tok/s ({times(g['speed_ratio'])}",
            f"{tps(o['minift']['tok_per_s'])} vs {tps(o['anchor']['tok_per_s'])} / "
            f"{tps(o['anchor_autocast']['tok_per_s'])} tok/s ({times(o['speed_ratio'])}"]


def speed_lora(lora):
    return {(size_of(r["size"]), METHOD[r["method"]]): {
        "minift peak GB": gb(r["minift"]["peak_bytes"]), "anchor peak GB": gb(r["anchor"]["peak_bytes"]),
        "minift tok/s": tps(r["minift"]["tok_per_s"]), "anchor tok/s": tps(r["anchor"]["tok_per_s"]),
        "speed": times(r["speed_ratio"]), "minift MFU": pct(r["minift_mfu"])} for r in lora["results"]}


LEAN_FULL = "full (bf16 + fp32 m, v)"
LEAN_ROWS = {  # row key -> (which run, size, method, mode)
    ("0.5B", "LoRA", "lean"): ("lean05", "0.5b", "lora", "lean"),
    ("0.5B", "LoRA", "lean+compile"): ("lean05", "0.5b", "lora", "lean+compile"),
    ("0.5B", "LoRA", "lean+compile+graph"): ("lean-graph", "0.5b", "lora", "lean+compile+graph"),
    ("0.5B", LEAN_FULL, "lean"): ("lean05", "0.5b", "full", "lean"),
    ("0.5B", LEAN_FULL, "lean+compile"): ("lean-graph", "0.5b", "full", "lean+compile"),
    ("0.5B", LEAN_FULL, "lean+compile+graph"): ("lean-graph", "0.5b", "full", "lean+compile+graph"),
    ("7B", "LoRA", "lean"): ("lean", "7b", "lora", "lean"),
    ("7B", "QLoRA", "lean"): ("lean", "7b", "qlora", "lean"),
}


def lean_results(lean05, lean_graph, lean) -> dict:
    runs = {"lean05": lean05, "lean-graph": lean_graph, "lean": lean}
    return {key: pick(runs[run]["results"], size=size, method=method, mode=mode)
            for key, (run, size, method, mode) in LEAN_ROWS.items()}


def speed_lean(lean05, lean_graph, lean, memory_py):
    return {key: {
        "minift peak GB": gb(r["minift"]["peak_bytes"]), "seed chapter GB": seed_total(memory_py, r["method"], key[0]),
        "anchor peak GB": gb(r["anchor"]["peak_bytes"]), "minift tok/s": tps(r["minift"]["tok_per_s"]),
        "anchor tok/s": tps(r["anchor"]["tok_per_s"]), "speed": times(r["speed_ratio"]),
        "minift MFU": pct(r["minift_mfu"])} for key, r in lean_results(lean05, lean_graph, lean).items()}


def speed_lean_after(lean05, lean_graph, lean, memory_py):
    rows = lean_results(lean05, lean_graph, lean)

    def peak(key, chapter=""):
        r = rows[key]
        return f"{gb(r['minift']['peak_bytes'])} GB ({chapter}{seed_total(memory_py, r['method'], key[0])})"
    earlier = {m: pick(lean["results"], size="0.5b", method=m, mode="lean") for m in ("full", "lora")}
    full_anchor = [pick(run["results"], size="0.5b", method="full", mode=mode)["anchor"]["tok_per_s"]
                   for run, mode in ((lean, "lean"), (lean05, "lean"), (lean_graph, "lean+compile"),
                                     (lean_graph, "lean+compile+graph"))]
    return [f"0.5B LoRA {peak(('0.5B', 'LoRA', 'lean'), 'chapter ')}, 0.5B full SFT "
            f"{peak(('0.5B', LEAN_FULL, 'lean'))}, 7B LoRA {peak(('7B', 'LoRA', 'lean'))}, "
            f"7B QLoRA {peak(('7B', 'QLoRA', 'lean'))}",
            f"(0.5B full: {times(earlier['full']['speed_ratio'])} in the earlier run, "
            f"{times(rows[('0.5B', LEAN_FULL, 'lean')]['speed_ratio'])} here; 0.5B LoRA: "
            f"{times(earlier['lora']['speed_ratio'])} earlier, "
            f"{times(rows[('0.5B', 'LoRA', 'lean')]['speed_ratio'])} here)",
            f"(0.5B full with checkpointing: {' / '.join(map(tps, full_anchor))} tok/s in four runs"]


def kernels_intro(kernels):
    return [f"a 2 GiB device copy ran at {kernels['meta']['copy_GBps']:,} GB/s"]


def speed_rows(rows: list[dict], dtype: str) -> list[dict]:
    """check_kernels.py's timing rows of one dtype: each follows the accuracy rows of its dtype."""
    out, current = [], None
    for r in rows:
        if r["kind"] == "accuracy":
            current = r["dtype"]
        elif current == dtype:
            out.append(r)
    return out


def speed_kernels(kernels, xent, recheck):
    def timed(rows, op, shape, impl):
        return pick(rows, kind="speed", op=op, shape=shape, impl=impl)

    def nf4(shape, impl):
        return timed(kernels["rows"], "nf4 dequantize", shape, impl)

    def share(*rows):
        return span([100 * hbm(r) for r in rows], ".0f") + "%"

    def fwd_bwd(rows, op, shape, impl):
        return [timed(rows, f"{op} {d}", shape, impl) for d in ("fwd", "bwd")]

    def us_pair(pair):
        return " / ".join(f"{r['us']:.0f}" for r in pair) + " us"
    bf16 = speed_rows(kernels["rows"], "bfloat16")
    swiglu = {impl: fwd_bwd(bf16, "swiglu", "4096 x 18944", impl) for impl in ("triton", "torch reference")}
    rms = {impl: fwd_bwd(bf16, "rmsnorm", "4096 x 3584", impl) for impl in ("triton", "torch reference")}
    softmax = {impl: [timed(run["rows"], "softmax xent part", f"1024 x {h} -> V 151936", impl)
                      for run in (xent, recheck) for h in (896, 3584)] for impl in ("triton", "torch reference")}

    def ce(h, impl):
        return timed(xent["rows"], "linear+CE fwd+bwd", f"4096 x {h} -> V 151936", impl)

    def ce_cell(what, r):
        return f"{what} {r['us'] / 1000:.1f} ms, +{r['peak_extra_GiB']:.2f} GiB"
    big, big_dq, small_dq = "18944 x 3584 dq=False", "18944 x 3584 dq=True", "4864 x 896 dq=True"
    return {
        ("NF4 dequantize, bf16 out", "18944 x 3584 (7B MLP)"): {
            "Triton": f"{nf4(big, 'triton')['us']:.1f} us, {nf4(big, 'triton')['GBps']:,} GB/s "
                      f"({share(nf4(big, 'triton'))} of 4.3 TB/s)",
            "torch reference": f"{nf4(big, 'torch reference')['us']:.1f} us ({share(nf4(big, 'torch reference'))})",
            "bitsandbytes": f"{nf4(big, 'bitsandbytes')['us']:.1f} us ({share(nf4(big, 'bitsandbytes'))})"},
        ("NF4 dequantize + double quant", "18944 x 3584"): {
            "Triton": f"{nf4(big_dq, 'triton')['us']:.1f} us, {nf4(big_dq, 'triton')['GBps']:,} GB/s "
                      f"({share(nf4(big_dq, 'triton'))})",
            "torch reference":
                f"{nf4(big_dq, 'torch reference')['us']:.1f} us ({share(nf4(big_dq, 'torch reference'))})",
            "bitsandbytes": f"{nf4(big_dq, 'bitsandbytes')['us']:.1f} us ({share(nf4(big_dq, 'bitsandbytes'))})"},
        ("NF4 dequantize + double quant", "4864 x 896 (0.5B MLP)"): {
            "Triton": f"{nf4(small_dq, 'triton')['us']:.1f} us ({share(nf4(small_dq, 'triton'))}, launch-bound)",
            "torch reference": f"{nf4(small_dq, 'torch reference')['us']:.1f} us",
            "bitsandbytes": f"{nf4(small_dq, 'bitsandbytes')['us']:.1f} us"},
        ("SwiGLU fwd / bwd, bf16", "4096 x 18944"): {
            "Triton": f"{us_pair(swiglu['triton'])} ({share(*swiglu['triton'])})",
            "torch reference": us_pair(swiglu["torch reference"])},
        ("RMSNorm fwd / bwd, bf16", "4096 x 3584"): {
            "Triton": us_pair(rms["triton"]), "torch reference": us_pair(rms["torch reference"])},
        ("softmax cross-entropy + its gradient (after the head matmul), bf16 logits", "1024 x 151,936"): {
            "Triton": f"{span([r['us'] for r in softmax['triton']], ',.0f')} us, "
                      f"{span([r['GBps'] for r in softmax['triton']], ',.0f')} GB/s ({share(*softmax['triton'])})",
            "torch reference": f"{span([r['us'] for r in softmax['torch reference']], ',.0f')} us "
                               f"({share(*softmax['torch reference'])})"},
        ("linear + CE fwd+bwd, V=151,936", "4096 x 3584"): {
            "Triton": ce_cell("fused, Triton softmax", ce(3584, "fused (grad in fwd)")),
            "torch reference": ce_cell("chunked", ce(3584, "chunked reference"))},
        ("linear + CE fwd+bwd, V=151,936", "4096 x 896"): {
            "Triton": ce_cell("fused, Triton softmax", ce(896, "fused (grad in fwd)")),
            "torch reference": ce_cell("chunked", ce(896, "chunked reference"))},
    }


def kernels_after(xent, kernels):
    def worst(what):
        return max(r["kernel_rel_err"] for r in xent["rows"] if r["kind"] == "accuracy" and r["what"] == what)
    before = pick(kernels["rows"], kind="speed", op="linear+CE fwd+bwd", shape="4096 x 3584 -> V 151936",
                  impl="fused (grad in fwd)")
    return [f"its loss agrees with float64 to {sci(worst('loss'))} and its gradient to {sci(worst('dlogits'))}",
            f"took {before['us'] / 1000:.1f} ms and +{before['peak_extra_GiB']:.2f} GiB at the 7B width"]


# docs/cpu.md

def train_tiny(report):
    val = report["eval_history"][-1]
    return [f"the `tiny-10m` model ({report['num_params']:,} parameters",
            f"{report['steps']} steps of 8 x 256 tokens ({report['tokens_seen'] / 1e6:.2f}M tokens",
            f"in {report['train_time_s'] / 60:.1f} minutes at {tps(report['tokens_per_s'])} tok/s: training loss "
            f"{report['first_loss']:.2f} -> {report['last_loss']:.2f}, **validation loss {val['loss']:.3f} "
            f"(perplexity {val['perplexity']:.1f})**"]


def capstone(report):
    cfg = report["config"]
    share = pct(report["trainable_params"] / report["num_params"])
    return [f"({report['trainable_params']:,} trained parameters, {share})",
            f"{cfg['steps']} steps of {cfg['batch_size']} packed rows of {cfg['seq_len']} tokens (no pair cut) in "
            f"{report['train_time_s']:.0f} s",
            f"held-out loss {report['eval_before']['loss']:.3f} -> {report['eval_after']['loss']:.3f}",
            f"the adapter ships as {report['saved_bytes'] / 1e6:.2f} MB",
            f"the predicted peak ({gib(report['predicted_peak_bytes'])} GiB",
            f"over the whole recipe ({gib(report['measured_peak_bytes'])} GiB"]


def story_eval(ev):
    """scripts/evaluate_stories.py's means and spreads over sampling seeds, one row per metric."""
    def cell(side, metric):
        spread = ev[side]["std_over_seeds"][metric]
        return f"{pct(ev[side]['mean'][metric])} ± {100 * spread:.1f}"
    return {(m,): {"before LoRA": cell("before", m), "after LoRA": cell("after", m)} for m in ev["after"]["mean"]}


COMPARE_LABEL = {"full": "full SFT", "lora": "LoRA", "qlora": "QLoRA"}


def compare_intro(compare):
    configs = {row["method"]: row["report"]["config"] for row in compare}
    c = configs["full"]
    assert configs["lora"]["lr"] == configs["qlora"]["lr"], "the text gives the adapters one learning rate"
    assert all(cfg[k] == c[k] for cfg in configs.values() for k in ("max_examples", "steps", "batch_size", "seq_len"))
    return [f"{c['max_examples']} pairs, {c['steps']} steps x {c['batch_size']} x {c['seq_len']} each, LoRA and QLoRA "
            f"r {configs['lora']['r']} at lr {sci(configs['lora']['lr'])}, full SFT at lr {sci(c['lr'])}"]


def compare_methods(compare):
    """The columns scripts/compare_methods.py prints, with the same roundings."""
    return {(f"{COMPARE_LABEL[row['method']]} (lr {sci(row['report']['config']['lr'])})",): {
        "trained params": f"{rep['trainable_params']:,}",
        "held-out loss before -> after": f"{rep['eval_before']['loss']:.3f} -> {rep['eval_after']['loss']:.3f}",
        "peak resident memory": f"{gib(rep['measured_peak_bytes'])} GiB",
        "train time": f"{rep['train_time_s']:.0f} s", "saved size": f"{rep['saved_bytes'] / 1e6:.1f} MB"}
        for row in compare for rep in [row["report"]]}


def compare_stories(compare):
    """scripts/compare_methods.py's story table: before -> after per method, whole percents."""
    def cell(rep, m):
        return f"{100 * rep['story_eval_before']['mean'][m]:.0f}% -> {100 * rep['story_eval_after']['mean'][m]:.0f}%"
    metrics = compare[0]["report"]["story_eval_after"]["mean"]
    return {(m,): {COMPARE_LABEL[row["method"]]: cell(row["report"], m) for row in compare} for m in metrics}


def bench_tiny(cpu, h200, h200_graph):
    return [f"{tps(cpu['minift_tok_s'])} vs {tps(cpu['plain_tok_s'])} tok/s ({times(cpu['ratio'])})",
            f"minift's loop as it is {tps(h200['minift_tok_s'])} vs {tps(h200['plain_tok_s'])} tok/s "
            f"({times(h200['ratio'])}; MFU {pct(h200['minift_mfu'])} vs {pct(h200['plain_mfu'])})",
            f"{tps(h200_graph['minift_tok_s'])} vs {tps(h200_graph['plain_tok_s'])} ({times(h200_graph['ratio'])}; "
            f"MFU {pct(h200_graph['minift_mfu'])} vs {pct(h200_graph['plain_mfu'])})"]


def decode_setup(f32, bf16):
    def setup(run):
        return run["prompt_len"], run["new_tokens"], run["runs"]
    assert setup(f32) == setup(bf16), "the text gives one setup for both dtypes"
    return [f"{f32['prompt_len']}-token prompt, {f32['new_tokens']} new tokens, greedy, median of {f32['runs']}"]


def decode_row(run) -> dict:
    """One row of scripts/bench_generate.py's result: three sides' tok/s, ratios, token ids."""
    same = run["ids_match"] and run["ids_match_f_linear"]
    differ = not run["ids_match"] and not run["ids_match_f_linear"]
    ids = Prose("yes") if same else Prose("no", (f"from new token {run['first_diff']}",)) if differ else Prose("?")
    speed = run["tok_per_s"]
    return {"transformers `generate`": f"{speed['transformers']:.1f} tok/s",
            "minift `generate`": f"{speed['minift']:.1f} tok/s", "ratio": times(run["ratio_minift_over_hf"]),
            "minift, F.linear": f"{speed['minift_f_linear']:.1f} tok/s ({times(run['ratio_minift_f_linear_over_hf'])})",
            "same token ids": ids}


def decode(f32, bf16):
    return {(run["dtype"],): decode_row(run) for run in (f32, bf16)}


def decode_move_intro(before, after):
    return [f"({after['date']}, same machine type, {span([before['runs'], after['runs']], 'd')} runs each"]


def decode_move(before, after):
    return {("kernel in model.py (before the move)",): decode_row(before),
            ("DecodeLinear swapped in by generate (now)",): decode_row(after)}


def fp32_readings(matvec, field_name):
    """One column of bench_matvec.py's fp32 rows on q/o, gate/up and the head, as 'a / b / c'."""
    return " / ".join(f"{pick(matvec['rows'], shape=shape, dtype='float32')[field_name]:.1f}"
                      for shape in ("q/o 896x896", "gate/up 4864x896", "head 151936x896"))


def decode_move_after(before, after, f32, matvec_now, matvec_then):
    assert matvec_now["date"] == after["date"], "the text says the matvec run was the same day as the decode runs"
    days = (datetime.date.fromisoformat(matvec_now["date"]) - datetime.date.fromisoformat(matvec_then["date"])).days
    return [f"({times(after['ratio_minift_over_hf'])} vs {times(before['ratio_minift_over_hf'])}",
            f"did not keep the {times(f32['ratio_minift_over_hf'])} of {f32['date']}",
            f"the same day reads the compiled kernel itself at {fp32_readings(matvec_now, 'matvec')} GB/s on q/o, "
            f"gate/up and the head ({fp32_readings(matvec_then, 'matvec')} "
            f"{'the day' if days == 1 else f'{days} days'} before) while F.linear reads "
            f"{fp32_readings(matvec_now, 'f_linear')} ({fp32_readings(matvec_then, 'f_linear')}) and `W.sum()` "
            f"{fp32_readings(matvec_now, 'w_sum')} ({fp32_readings(matvec_then, 'w_sum')})"]


def matvec_intro(matvec):
    return [f"({matvec['date']}, the same machine, `results/cpu/bench_matvec.json`)"]


def matvec(m):
    rows = {}
    for n, shape in enumerate(("q/o 896x896", "k/v 128x896", "gate/up 4864x896", "down 896x4864", "head 151936x896")):
        f32, b16 = (pick(m["rows"], shape=shape, dtype=d) for d in ("float32", "bfloat16"))
        unit = " GB/s" if n == 0 else ""   # the first row names the unit
        rows[(shape.replace("x", " x "),)] = {
            "fp32 F.linear": f"{f32['f_linear']:.1f}{unit}", "fp32 matvec": f"{f32['matvec']:.1f}",
            "bf16 F.linear": f"{b16['f_linear']:.1f}", "bf16 matvec": f"{b16['matvec']:.1f}",
            "`W.sum()` (fp32 / bf16)": f"{f32['w_sum']:.1f} / {b16['w_sum']:.1f}"}
    return rows


def matvec_after(matvec_then, matvec_now):
    down = [pick(m["rows"], shape="down 896x4864", dtype="bfloat16") for m in (matvec_then, matvec_now)]
    return [f"({span([r['matvec'] for r in down], '.0f')} vs {span([r['f_linear'] for r in down], '.0f')} GB/s "
            f"over two runs)"]


def warmup(f32, bf16):
    def ms_per_token(run, side):
        return 1000 / run["tok_per_s"][side]

    def break_even(run):   # new tokens after which the kernels' build time is paid back
        w = run["warmup_s"]
        return (w["minift"] - w["minift_f_linear"]) / (ms_per_token(run, "minift_f_linear")
                                                        - ms_per_token(run, "minift")) * 1000
    w32, w16 = f32["warmup_s"], bf16["warmup_s"]
    return [f"minift's first 8-token call {w32['minift']:.1f} s vs {w32['minift_f_linear']:.1f} s with F.linear in "
            f"fp32, {w16['minift']:.1f} vs {w16['minift_f_linear']:.1f} s in bf16",
            f"({ms_per_token(f32, 'minift'):.0f} vs {ms_per_token(f32, 'minift_f_linear'):.0f} ms a token in fp32, "
            f"{ms_per_token(bf16, 'minift'):.0f} vs {ms_per_token(bf16, 'minift_f_linear'):.0f} ms in bf16)",
            f"back after about {round(break_even(f32), -1):.0f} new tokens in fp32 and "
            f"{round(break_even(bf16), -1):.0f} in bf16"]


# docs/distributed.md

DIST_LABEL = {"7b-full": "7B full", "0.5b-lora": "0.5B LoRA, fast", "0.5b-full": "0.5B full", "14b-full": "14B full"}


def distributed(bench):
    rows = {}
    for row in bench["rows"]:
        ours, anchors = row["minift"], row.get("anchor", {})
        for world, m in ours.items():
            a = anchors.get(world)
            scaled = world == "2" and "1" in ours   # 2 GPUs beside 1 in the same run: the scaling
            rows[(DIST_LABEL[row["row"]], world)] = {
                "minift tok/s": tps(m["tok_per_s"])
                + (f" ({times(m['tok_per_s'] / ours['1']['tok_per_s'])})" if scaled else ""),
                "per-GPU peak GB (predicted)": f"{gb(m['peak_bytes'])} ({gb(m['predicted_bytes'])})",
                "MFU per GPU": pct(m["mfu_per_gpu"]),
                "anchor tok/s": "-" if a is None else tps(a["tok_per_s_total"])
                + (f" ({times(a['tok_per_s_total'] / anchors['1']['tok_per_s_total'])})" if scaled and "1" in anchors
                   else ""),
                "anchor peak GB": "-" if a is None else f"{a['max_per_gpu_peak_GB']:.2f}"}
    return rows


def distributed_after(bench, memory_py):
    full7 = pick(bench["rows"], row="7b-full")
    full05 = pick(bench["rows"], row="0.5b-full")["minift"]
    return [f"7B full SFT fits two GPUs at {full7['minift']['2']['peak_bytes'] / 1e9:.0f} GB each (the seed's "
            f"{seed_total(memory_py, 'full', '7B')} GB halved",
            f"{times(full7['minift']['2']['tok_per_s'] / full7['anchor']['2']['tok_per_s_total'])} the anchor's speed",
            f"({times(full05['2']['tok_per_s'] / full05['1']['tok_per_s'])} on 2 GPUs"]


def _one_gpu_runs(bench):
    """(row, checkpointing label, run, anchor) of a bench_distributed.py JSON's one-GPU runs."""
    for row in bench["rows"]:
        for run in row["runs"]:
            spec = run["spec"]
            label = ("none" if not spec["grad_ckpt"] else "every layer" if spec["ckpt_layers"] is None
                     else f"bottom {spec['ckpt_layers']} of 28 layers")
            yield row["row"], label, run["minift"], row["anchor"].get("1")


def full_one_gpu(before, after):
    rows = {}
    for adamw, bench in (("foreach lists", before), ("fused kernel", after)):
        for name, label, m, a in _one_gpu_runs(bench):
            if name == "7b-full-1":
                rows[(adamw, label)] = {
                    "minift tok/s": tps(m["tok_per_s"]),
                    "peak GB (predicted)": f"{gb(m['peak_bytes'])} ({gb(m['predicted_bytes'])})",
                    "MFU": pct(m["mfu_per_gpu"]), "anchor tok/s": tps(a["tok_per_s_total"]),
                    "anchor peak GB": f"{a['max_per_gpu_peak_GB']:.2f}",
                    "speed x anchor": times(m["tok_per_s"] / a["tok_per_s_total"])}
    return rows


def full_one_gpu_after(adamw7, adamw05, after, before):
    runs = {(name, label): m for name, label, m, _ in _one_gpu_runs(after)}
    every, eight = runs[("7b-full-1", "every layer")], runs[("7b-full-1", "bottom 8 of 28 layers")]
    ms = lambda j, key: f"{1e3 * next(r for k, r in j['rows'].items() if k.startswith(key))['s']:.1f} ms"  # noqa: E731
    lists, fused, torch_fused = "minift foreach lists", "minift foreach + fused kernel from 1,048,576", "torch.optim"
    fused7 = next(r for k, r in adamw7["rows"].items() if k.startswith(fused))
    small = runs[("0.5b-full-1", "none")]
    wander = [e for name, _, m, _ in _one_gpu_runs(before) if name == "0.5b-full-1" for e in m["per_step_tok_per_s"]]
    return [f"{times(eight['tok_per_s'] / every['tok_per_s'])} at the same {gb(eight['peak_bytes'])} GB",
            f"{ms(adamw7, lists)} as foreach lists, {ms(adamw7, fused)} with the kernel ({fused7['TB_per_s']:.2f} TB/s",
            f"against {ms(adamw7, torch_fused)} for", f"For 0.5B it is {ms(adamw05, lists).replace(' ms', '')} against "
            f"{ms(adamw05, fused)}, and torch's fused {ms(adamw05, torch_fused)}",
            f"ran {tps(small['tok_per_s'])} tok/s at {gb(small['peak_bytes'])} GB",
            f"({tps(min(wander))}-{tps(max(wander))} tok/s"]


def not_yet_on_two_gpus(adamw7, before, after, memory_py):
    from minift import memory
    from minift.config import ModelConfig
    ms = lambda key: f"{1e3 * next(r for k, r in adamw7['rows'].items() if k.startswith(key))['s']:.1f}"  # noqa: E731
    every = {name + label: m for name, label, m, _ in _one_gpu_runs(before)}[("7b-full-1" + "every layer")]
    eight = {name + label: m for name, label, m, _ in _one_gpu_runs(after)}[("7b-full-1" + "bottom 8 of 28 layers")]
    fit = memory.estimate(ModelConfig.preset("qwen2.5-7b"), "full", 4, 1024, grad_ckpt=True, ckpt_layers=10,
                          world_size=2, strategy="fsdp").total
    return [f"from {ms('minift foreach lists')} to {ms('minift foreach + fused kernel from 1,048,576')} ms",
            f"predicted {fit / 1e9:.1f} GB per GPU", f"from {tps(every['tok_per_s'])} to {tps(eight['tok_per_s'])} tok/s"]


def adamw_one_launch(full05, lora05, full7, chunked7):
    ms = lambda j, key: f"{1e3 * next(r for k, r in j['rows'].items() if k.startswith(key))['s']:.1f}"  # noqa: E731
    tb = lambda j, key: f"{next(r for k, r in j['rows'].items() if k.startswith(key))['TB_per_s']:.2f}"  # noqa: E731
    lists, torch_fused = "minift foreach lists", "torch.optim"
    fused = lambda m: f"minift foreach + fused kernel from {m:,} elements"  # noqa: E731
    return [f"Qwen2.5-0.5B full {ms(full05, lists)} ms as lists, {ms(full05, fused(1048576))} ms from",
            f"{ms(full05, fused(65536))} ms from 65,536, **{ms(full05, fused(1))} ms** from 1 ({tb(full05, fused(1))} TB/s)",
            f"torch's fused {ms(full05, torch_fused)} ms",
            f"{lora05['tensors']} tensors) {ms(lora05, lists)} ms as lists, **{ms(lora05, fused(1))}",
            f"ms** from 1, torch's fused {ms(lora05, torch_fused)} ms; 7B {ms(full7, fused(1))} ms ({tb(full7, fused(1))} TB/s)",
            f"ran the 7B step at {ms(chunked7, fused(1048576))} ms"]


def cpt_recipe_one_launch(after, before):
    a, b = after["rows"]["defaults"], before["rows"]["defaults"]
    return [f"steady step **{a['steady_step_s']:.3f} s** against {b['steady_step_s']:.3f} s",
            f"**{tps(a['tokens_per_s'])} tok/s** over the whole phase (its first step took {a['first_step_s']} s"]


def cpt_recipe(job):
    rows = job["rows"]
    d, c = rows["defaults"], rows["compile"]
    return [f"{job['steps']} steps of {job['batch']} x {job['seq']}", f"**{tps(d['tokens_per_s'])} tok/s**",
            f"first step included ({d['first_step_s']} s, the graph's capture; steady step {d['steady_step_s']:.3f} s)",
            f"{tps(rows['no-cuda-graph']['tokens_per_s'])} and {tps(rows['eager']['tokens_per_s'])} tok/s",
            f"with `--compile` {tps(c['tokens_per_s'])} tok/s (first step {c['first_step_s']} s, steady step "
            f"{c['steady_step_s']:.3f} s"]


H200, CPU, MEMORY_PY = "results/h200/", "results/cpu/", "minift/memory.py"
WHOLE_JOB_7B = H200 + "whole_job_7b_14b.json"
GRID, QUICK = H200 + "memory_check.json", H200 + "memory_check_quick.json"
FAST = (H200 + "bench_fast.json", H200 + "bench_fast_run2.json")
GPU, OLD_7B_QLORA = H200 + "bench_gpu.json", H200 + "bench_7b_qlora_fast_issue11.json"
RECIPE_OPERATOR = H200 + "bench_recipe_2026-12-02_operator/bench_recipe.json"
LEAN = (H200 + "bench_lean05.json", H200 + "bench_lean-graph.json", H200 + "bench_lean.json", MEMORY_PY)
KERNELS, XENT = H200 + "check_kernels.json", H200 + "check_kernels_xent.json"
DECODE = (CPU + "bench_generate_float32.json", CPU + "bench_generate_bfloat16.json")
MOVE = (CPU + "decode_move_check/before_move_kernel_in_model.json",
        CPU + "decode_move_check/after_move_generate_swap.json")
MATVEC, MATVEC_NOW = CPU + "bench_matvec.json", CPU + "decode_move_check/bench_matvec.json"
DISTRIBUTED = H200 + "bench_distributed_x2.json"
ONE_GPU = (H200 + "bench_distributed_1gpu_ckpt_layers.json", H200 + "bench_distributed_1gpu.json")
ADAMW_7B, ADAMW_05B = H200 + "bench_adamw_qwen2.5-7b.json", H200 + "bench_adamw_qwen2.5-0.5b.json"
PROFILES = tuple(H200 + f"profile_{row}.txt" for row in ("0.5b_lora_fast-compile", "0.5b_lora_fast-compile-graph",
                                                        "7b_qlora_fast-compile", "7b_qlora_fast-compile_bf16"))
CHECKS = [   # in the order of the docs
    Text("whole job intro", "docs/memory.md", (WHOLE_JOB_7B,), whole_job_intro),
    Table("whole job", "docs/memory.md", (WHOLE_JOB_7B, H200 + "whole_job_72b.json"), 3, whole_job),
    Text("whole job, after", "docs/memory.md", (WHOLE_JOB_7B,), whole_job_after),
    Table("step grid", "docs/memory.md", (GRID, MEMORY_PY), 4, memory_grid),
    Text("capstone settings intro", "docs/memory.md", (CAPSTONE_JOB,), capstone_settings_intro),
    Table("capstone settings", "docs/memory.md",
          (*(H200 + f"profile_0.5b_lora_fast-compile-graph_bf16{v}.txt" for v in
             ("_2026-12-02_final", "_dropout0.05_unfused", "_docs3_unfused", "_docs3_dropout0.05_unfused",
              "_docs3_dropout0.05_2026-12-02_operator")),
           RECIPE_OPERATOR, CAPSTONE_JOB, MEMORY_PY), 1, capstone_settings),
    Text("step grid, after", "docs/memory.md", (GRID,), memory_grid_after),
    Table("quick grid", "docs/memory.md", (QUICK,), 3, memory_quick),
    Text("quick grid, after", "docs/memory.md", (GRID, QUICK), memory_quick_after),
    Table("strongest stacks", "docs/speed.md", (GPU,), 3, strongest),
    Text("strongest stacks, after", "docs/speed.md", (GPU, OLD_7B_QLORA), strongest_after),
    Text("NF4 operator", "docs/speed.md", (GPU, OLD_7B_QLORA, H200 + "profile_7b_qlora_fast-compile-graph_bf16.txt"),
         qlora_operator),
    Text("anchor variance", "docs/speed.md", (GPU, H200 + "bench_gpu_cat_fusion_run.json"), anchor_variance),
    Text("fused projections", "docs/speed.md",
         tuple(H200 + f for f in ("profile_0.5b_lora_fast-compile-graph_bf16.txt",
                                  "profile_0.5b_lora_fast-compile-graph_bf16_unfused.txt",
                                  "profile_0.5b_lora_fast-compile-graph_bf16_cat_fusion.txt", "probe_fused_matmuls.json")),
         fused_step),
    Text("capstone step", "docs/speed.md",
         tuple(H200 + f"profile_0.5b_lora_fast-compile-graph_bf16_{f}.txt"
               for f in ("docs3_unfused", "dropout0.05_unfused", "docs3_dropout0.05_unfused", "docs3_dropout0.05")),
         capstone_step),
    Text("recipe phase", "docs/speed.md", (H200 + "bench_recipe.json", H200 + "bench_recipe_before_optimizer_fix.json",
                                           H200 + "bench_recipe_compile_default.json"), recipe),
    Text("recipe phase rerun", "docs/speed.md", (H200 + "bench_recipe_rerun_2026-12-02.json",), recipe_rerun),
    Text("recipe phase, final code", "docs/speed.md",
         (RECIPE_OPERATOR, H200 + "bench_recipe_rerun_2026-12-02.json",
          *(H200 + f"profile_0.5b_lora_fast-compile-graph_bf16_docs3_dropout0.05{v}.txt" for v in ("_2026-12-02_operator", ""))),
         recipe_final),
    Text("grad accumulation keeps the graph", "docs/speed.md",
         tuple(H200 + f"recipe_grad_accum_2026-12-03/{run}.log" for run in ("accum2_graph", "accum2_nograph", "accum1_graph")),
         grad_accum_graph),
    Text("CPT grad accumulation keeps the graph", "docs/speed.md",
         tuple(H200 + f"cpt_grad_accum_2026-12-03/cpt_accum2_{v}.log" for v in ("graph", "nograph")), cpt_grad_accum),
    Text("when compiling pays", "docs/speed.md",
         tuple(H200 + f for f in ("bench_7b_qlora_fast-graph_bf16.json", "bench_7b_qlora_fast-compile-graph_bf16.json",
                                  "bench_0.5b_lora_fast-graph_bf16.json", "bench_0.5b_lora_fast-compile-graph_bf16.json",
                                  "bench_recipe_compile_default_minift.log", "bench_recipe_minift_compile.log",
                                  "bench_recipe_compile_default.json", "bench_recipe_first_layer_eager.json")),
         when_compiling_pays),
    Text("fused experiment", "docs/speed.md", (H200 + "profile_0.5b_lora_fast-compile-graph_bf16_before_fusion.txt",
                                               H200 + "experiment_fused_lora_profile_0.5b_lora_fast-compile-graph_bf16.txt"),
         fused_experiment),
    Text("adapters in the base's matmul", "docs/speed.md",
         (*(H200 + f"profile_0.5b_lora_fast-compile-graph_bf16_2026-12-02_{v}.txt" for v in ("before", "function", "operator")),
          H200 + "bench_gpu_2026-12-02_one_launch.json", H200 + "bench_gpu_2026-12-02_adapters_in_matmul_function.json"),
         adapters_in_matmul),
    Text("final code", "docs/speed.md",
         (H200 + "bench_gpu_2026-12-02_final.json",
          *(H200 + f"profile_0.5b_lora_fast-compile-graph_bf16_2026-12-02_{v}.txt" for v in ("final", "final_run2")),
          GPU, H200 + "bench_gpu_2026-12-02_one_launch.json", H200 + "bench_gpu_2026-12-02_adapters_in_matmul_function.json"),
         final_code),
    Text("next milliseconds", "docs/speed.md",
         (H200 + "profile_0.5b_lora_fast-compile-graph_bf16_2026-12-02_final_run2.txt",
          H200 + "inductor_kernels_0.5b_lora_backward_2026-12-02.txt"), next_milliseconds),
    Text("cat lowering", "docs/speed.md",
         tuple(H200 + f"profile_0.5b_lora_fast-compile-graph_bf16_2026-12-02_cat_{v}.txt" for v in ("pointwise", "concat_kernel")),
         cat_lowering),
    Text("RoPE operator tried", "docs/speed.md", (H200 + "rope_qkv_operator_tried_2026-12-02.txt",), rope_operator_tried),
    Text("adapters inside the NF4 product", "docs/speed.md",
         tuple(H200 + f"nf4_groups_2026-12-03/prof7b_{v}.txt" for v in ("fused", "unfused")), nf4_groups),
    Text("in rounds", "docs/speed.md",
         tuple(H200 + f"bench_rounds_2026-12-03/bench_{r}_x3.json"
               for r in ("7b_qlora_fast-compile-graph_bf16", "0.5b_lora_fast-compile-graph_bf16")), in_rounds),
    Text("more rounds", "docs/speed.md",
         (H200 + "qlora_recipe_2026-12-03/bench_7b_qlora_fast-compile-graph_bf16_x2.json",
          H200 + "bench_rounds_2026-12-03/bench_7b_qlora_fast-compile-graph_bf16_x3.json"), more_rounds),
    Text("NF4 wide matrix tried", "docs/speed.md",
         tuple(H200 + "nf4_wide_2026-12-03/" + f for f in (
             "run1_probe_nf4_wide.json", "run2_probe_nf4_wide.json", "run1_prof7b_align1.txt", "run1_prof7b_align64.txt",
             "run2_prof7b_1_inside_up_to_None.txt", "run2_prof7b_2_inside_up_to_8192.txt",
             "run2_prof7b_3_inside_up_to_None.txt", "run2_prof7b_4_inside_up_to_8192.txt")), nf4_wide_tried),
    Text("QLoRA recipe timed", "docs/speed.md",
         tuple(H200 + f"qlora_recipe_2026-12-03/{v}.log" for v in ("qlora", "qlora_unfused")), qlora_recipe),
    Text("graph's plain replay", "docs/speed.md",
         (H200 + "graph_plain_replay_2026-12-03/prof.log", H200 + "graph_plain_replay_2026-12-03/new7b.txt",
          H200 + "graph_plain_replay_2026-12-03/bench05.log", H200 + "nf4_groups_2026-12-03/prof7b_fused.txt",
          H200 + "bench_rounds_2026-12-03/bench_0.5b_lora_fast-compile-graph_bf16_x3.json"), graph_plain_replay),
    Text("two changes measured before they landed", "docs/speed.md",
         tuple(H200 + "branches_2026-12-03/" + f for f in ("lean_host.jsonl", "probe.log", "bench_0.5b_lora_lean_x2.json")),
         branches_landed),
    Text("what the anchors wait for", "docs/speed.md",
         tuple(H200 + "anchor_host_2026-12-03/" + f for f in ("step_times_20.jsonl", "anchor_profiles.jsonl",
                                                               "bench_7b_qlora_fast-compile-graph_bf16_x2.json"))
         + (H200 + "graph_plain_replay_2026-12-03/new1.txt", H200 + "graph_plain_replay_2026-12-03/new7b.txt",
            H200 + "anchor_host_2026-12-03/recipe_grad_ckpt.log", H200 + "anchor_host_2026-12-03/same_machine_profile05.txt",
            H200 + "anchor_host_2026-12-03/same_machine_anchor05.jsonl"), anchors_wait),
    Text("gate/up interleaved tried", "docs/speed.md",
         tuple(H200 + f"gate_up_interleaved_2026-12-03/{v}.txt"
               for v in ("inter1", "inter2", "blocks1", "blocks2", "inter_docs3", "blocks_docs3")), gate_up_interleaved),
    Text("lean host-bound", "docs/speed.md",
         (H200 + "bench_gpu_2026-12-02_final.json", H200 + "host_time_lean_2026-12-02.jsonl",
          H200 + "host_time_0.5b_lora_lean_2026-12-02.jsonl", H200 + "host_time_lean_cprofile_2026-12-02.txt",
          H200 + "bench_0.5b_lora_lean-graph_2026-12-02.json"), lean_host_bound),
    Table("fast", "docs/speed.md", FAST, 3, speed_fast),
    Text("fast, after", "docs/speed.md", (*FAST, H200 + "bench_7b_qlora_fast-compile_bf16.json"), speed_fast_after),
    Table("profiles", "docs/speed.md", PROFILES, 1, speed_profile,
          not_from_sources={"what the profile said": "read by hand off each profile's kernel list (sums, '~')",
                            "next": "what was built next: words ('bf16' is a dtype, not a measurement)"}),
    Text("profiles, after", "docs/speed.md", (FAST[1], H200 + "bench_0.5b_lora_fast-compile-graph_fp32.json",
                                              H200 + "bench_7b_qlora_fast-compile_bf16_old_loss.json"),
         speed_profile_after),
    Table("peft's numerics", "docs/speed.md", (H200 + "bench_lora.json",), 2, speed_lora),
    Table("lean", "docs/speed.md", LEAN, 3, speed_lean),
    Text("lean, after", "docs/speed.md", LEAN, speed_lean_after),
    Text("kernels intro", "docs/speed.md", (KERNELS,), kernels_intro),
    Table("kernels", "docs/speed.md", (KERNELS, XENT, H200 + "check_kernels_xent_recheck.json"), 2, speed_kernels),
    Text("kernels, after", "docs/speed.md", (XENT, KERNELS), kernels_after),
    Table("full SFT on one GPU", "docs/speed.md", ONE_GPU, 2, full_one_gpu),
    Text("full SFT on one GPU, after", "docs/speed.md", (ADAMW_7B, ADAMW_05B, ONE_GPU[1], ONE_GPU[0]), full_one_gpu_after),
    Text("AdamW, one launch", "docs/speed.md", tuple(H200 + f"bench_adamw_qwen2.5-{n}.json" for n in (
        "0.5b_full_one_launch", "0.5b_lora_one_launch", "7b_one_launch", "7b_chunked")), adamw_one_launch),
    Text("recipe, full training", "docs/speed.md", (H200 + "job_cpt_0.5b_2026-12-02/job_cpt.json",), cpt_recipe),
    Text("recipe, full training, one launch", "docs/speed.md", (H200 + "job_cpt_0.5b_2026-12-02_one_launch/job_cpt.json",
                                                                 H200 + "job_cpt_0.5b_2026-12-02/job_cpt.json"),
         cpt_recipe_one_launch),
    Text("from scratch", "docs/cpu.md", (CPU + "train_tiny_report.json",), train_tiny),
    Text("capstone default", "docs/cpu.md", (CPU + "default_run_2026-12-01_sentence_rule/lora_qwen_default_report.json",),
         capstone),
    Table("capstone evaluation", "docs/cpu.md", (CPU + "default_run_2026-12-01_sentence_rule/evaluate_stories_3seeds.json",),
          1, story_eval),
    Text("chapter's exercise, intro", "docs/cpu.md", (CPU + "compare_methods.json",), compare_intro),
    Table("chapter's exercise", "docs/cpu.md", (CPU + "compare_methods.json",), 1, compare_methods),
    Table("chapter's exercise, stories", "docs/cpu.md", (CPU + "compare_methods.json",), 1, compare_stories),
    Text("training loop overhead", "docs/cpu.md",
         (CPU + "bench_tiny_cpu.json", H200 + "bench_tiny_h200.json", H200 + "bench_tiny_h200_graph.json"), bench_tiny),
    Text("decoding setup", "docs/cpu.md", DECODE, decode_setup),
    Table("decoding", "docs/cpu.md", DECODE, 1, decode),
    Text("decode kernel moved, intro", "docs/cpu.md", MOVE, decode_move_intro),
    Table("decode kernel moved", "docs/cpu.md", MOVE, 1, decode_move),
    Text("decode kernel moved, after", "docs/cpu.md", (*MOVE, DECODE[0], MATVEC_NOW, MATVEC), decode_move_after),
    Text("matvec intro", "docs/cpu.md", (MATVEC,), matvec_intro),
    Table("matvec", "docs/cpu.md", (MATVEC,), 1, matvec),
    Text("matvec, after", "docs/cpu.md", (MATVEC, MATVEC_NOW), matvec_after),
    Text("kernel warm-up", "docs/cpu.md", DECODE, warmup),
    Table("two H200s", "docs/distributed.md", (DISTRIBUTED,), 2, distributed),
    Text("two H200s, after", "docs/distributed.md", (DISTRIBUTED, MEMORY_PY), distributed_after),
    Text("not yet on two GPUs", "docs/distributed.md", (ADAMW_7B, *ONE_GPU, MEMORY_PY), not_yet_on_two_gpus),
]


# ---- reading the docs --------------------------------------------------------------------------

@dataclass
class Block:
    """A table or a paragraph of a doc, with the marker on the line above it (if any)."""
    doc: str
    line: int                   # 1-based, its first line
    lines: list[str]
    marker: tuple[str, str] | None = None   # (kind: "table" | "text", what follows "numbers:")

    @property
    def is_table(self) -> bool:
        return self.lines[0].startswith("|")

    def cells(self) -> tuple[list[str], list[tuple[int, list[str]]]]:
        """The header's cells and each row's (line number, cells); the separator line skipped."""
        def split(line):
            return [c.strip() for c in line.strip().strip("|").split("|")]
        return split(self.lines[0]), [(self.line + i, split(l)) for i, l in enumerate(self.lines) if i >= 2]

    def has_numbers(self) -> bool:
        return self.is_table and any(re.search(r"\d", c) for _, row in self.cells()[1] for c in row)


@functools.cache
def blocks(doc: str) -> tuple[Block, ...]:
    out, lines, i = [], (ROOT / doc).read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        if MARKER.fullmatch(lines[i].strip()):
            assert i + 1 < len(lines) and lines[i + 1].strip() and not MARKER.fullmatch(lines[i + 1].strip()), \
                f"{doc}:{i + 1}: a numbers marker belongs on the line right above its table or paragraph"
            i += 1
            continue
        if not lines[i].strip():
            i += 1
            continue
        j = i
        while j < len(lines) and lines[j].strip() and not MARKER.fullmatch(lines[j].strip()):
            j += 1
        block = Block(doc, i + 1, lines[i:j])
        above = MARKER.fullmatch(lines[i - 1].strip()) if i else None
        if above:
            block.marker = ("text" if above.group(1) else "table", above.group(2).strip())
        assert all(l.startswith("|") for l in block.lines) or not any(l.startswith("|") for l in block.lines), \
            f"{doc}:{i + 1}: a table and text in one block: leave a blank line between them"
        out.append(block)
        i = j
    return tuple(out)


def marked(doc: str) -> list[Block]:
    return [b for b in blocks(doc) if b.marker]


def block_of(check) -> Block:
    """The block whose marker names this check's kind and sources (the n-th such block for the
    n-th such check, where several share them)."""
    def key(kind, doc, sources):
        return kind, doc, " ".join(sources)
    same = [c for c in CHECKS if key(c.kind, c.doc, c.sources) == key(check.kind, check.doc, check.sources)]
    found = [b for b in marked(check.doc) if b.marker == (check.kind, " ".join(check.sources))]
    assert len(found) == len(same), (f"{check.doc}: {len(found)} markers '<!-- numbers"
                                     f"{' in the text below' if check.kind == 'text' else ''}: "
                                     f"{' '.join(check.sources)} -->' for {len(same)} checks")
    return found[same.index(check)]


# ---- the tests ---------------------------------------------------------------------------------

def test_every_table_of_numbers_has_a_marker():
    unmarked = [f"{b.doc}:{b.line}: {b.lines[0][:80]}" for doc in DOCS for b in blocks(doc)
                if b.has_numbers() and b.marker is None]
    assert not unmarked, "tables of numbers without '<!-- numbers: SOURCES -->' above them:\n" + "\n".join(unmarked)


def test_every_marker_names_files_that_exist_or_says_why_not():
    problems = []
    for doc in DOCS:
        for b in marked(doc):
            kind, what = b.marker
            if kind == "table" and not b.is_table:
                problems.append(f"{doc}:{b.line - 1}: a table's marker above text (text: 'numbers in the text below')")
            if kind == "text" and b.is_table:
                problems.append(f"{doc}:{b.line - 1}: a text marker above a table")
            if re.fullmatch(r"(none|unchecked) \(.+\)", what):
                continue
            problems += [f"{doc}:{b.line - 1}: {path} does not exist" for path in what.split()
                         if not (ROOT / path).is_file()]
    assert not problems, "\n".join(problems)


def test_every_marker_has_its_check_and_every_check_its_marker():
    named = sorted((d, *b.marker) for d in DOCS for b in marked(d) if not re.match(r"(none|unchecked) \(", b.marker[1]))
    checked = sorted((c.doc, c.kind, " ".join(c.sources)) for c in CHECKS)
    assert named == checked, ("markers without a check in CHECKS: " + repr([m for m in named if m not in checked])
                              + "\nchecks without a marker: " + repr([c for c in checked if c not in named]))


@pytest.mark.parametrize("table", [c for c in CHECKS if c.kind == "table"], ids=lambda c: f"{c.doc}: {c.name}")
def test_table_numbers_match_their_sources(table: Table):
    block = block_of(table)
    header, rows = block.cells()
    expected = table.expected(*map(load, table.sources))
    problems, seen = [], []
    for line, cells in rows:
        key = tuple(cells[:table.key_columns])
        where = f"{table.doc}:{line} {' | '.join(key)}"
        if key not in expected:
            problems.append(f"{where}: no such row in {', '.join(table.sources)} (rows: {list(expected)})")
            continue
        seen.append(key)
        want = expected[key]
        problems += [f"{where}: no column '{col}' in the doc" for col in want if col not in header]
        for col, cell in zip(header[table.key_columns:], cells[table.key_columns:]):
            if col in table.not_from_sources:
                continue
            if col not in want:
                if re.search(r"\d", cell):
                    problems.append(f"{where} / {col}: '{cell}' has a number no source gives")
            elif not (want[col].matches(cell) if isinstance(want[col], Prose) else cell == want[col]):
                problems.append(f"{where} / {col}: the doc says '{cell}', the sources give {want[col]!r}")
    problems += [f"{table.doc}: row {key} of the sources is missing from the table" for key in expected
                 if key not in seen]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("text", [c for c in CHECKS if c.kind == "text"], ids=lambda c: f"{c.doc}: {c.name}")
def test_text_numbers_match_their_sources(text: Text):
    block = block_of(text)
    paragraph = re.sub(r"\s+", " ", " ".join(block.lines))
    missing = [p for p in text.expected(*map(load, text.sources)) if p not in paragraph]
    assert not missing, (f"{text.doc}:{block.line}: the paragraph does not say, word for word (from "
                         f"{', '.join(text.sources)}):\n" + "\n".join(missing))
