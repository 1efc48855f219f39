"""A release's dataset card: ``README.md`` at the release root, a Hugging Face dataset card.

Its YAML front matter is the Hub's dataset card metadata: ``license`` (only when the
config names one), ``pretty_name``, ``size_categories``, ``task_categories``, ``tags`` and
``configs``, whose ``data_files`` name the Parquet parts (``data/*.parquet``), so that the
Hub's viewer and ``datasets.load_dataset(<release folder>)`` read the documents and not the
``jsonl.gz`` copies or the attribute files. The body is made from the manifest alone:
sources, sizes, the gate's verdict with every expectation, the ToEdit parameters, the prior.
"""

from __future__ import annotations

import math

import yaml

from semisynth.tasks.attributes import ATTRIBUTE_SET, ATTRIBUTES, PREFIX

CARD = "README.md"
PART_FOLDERS = {"parquet": "data", "jsonl.gz": "documents"}  # as tasks.release writes them
# The Hub's size buckets (number of rows), smallest first: (upper bound, label).
_SIZES = [(10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
          (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B"),
          (10**10, "1B<n<10B"), (10**11, "10B<n<100B"), (10**12, "100B<n<1T")]

ATTRIBUTE_MEANING = {
    "ppl": "perplexity of the released text under the prior (null: no token scored)",
    "scored_tokens": "tokens of the released text the prior scored",
    "revised_tokens": ("tokens the edit strategy chose to redraw (ToEdit: p > threshold) when "
                       "it made this text"),
    "edited_tokens": "tokens that changed in that redraw",
    "dropped_tokens": "tokens the edit strategy dropped (ToEdit: p < low_threshold)",
    "truncated": "1: only the first prior.max_doc_tokens tokens were scored, else 0",
}


def size_category(documents: int) -> str:
    return next((label for bound, label in _SIZES if documents < bound), "n>1T")


def data_files(formats: list[str]) -> str:
    """The parts the card's ``configs`` points at: Parquet where the release has it."""
    return "data/*.parquet" if "parquet" in formats else "documents/*.jsonl.gz"


def front_matter(manifest: dict) -> dict:
    """The card's metadata, as the Hub reads it."""
    meta: dict = {}
    if manifest.get("license"):
        meta["license"] = manifest["license"]
    meta |= {
        "pretty_name": f"{manifest['name']} {manifest['version']}",
        "size_categories": [size_category(int(manifest["documents"]))],
        "task_categories": ["text-generation"],
        "tags": ["semisynth", "semi-synthetic", "toedit", "dolma-attributes"],
        "configs": [{"config_name": "default", "data_files": [
            {"split": "train", "path": data_files(manifest.get("formats", ["parquet"]))}]}],
    }
    return meta


def _num(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _sources(manifest: dict) -> list[str]:
    lines = []
    for corpus, origin in (manifest.get("lineage") or {}).items():
        if origin.get("paths"):
            lines.append(f"- `{corpus}`: files {', '.join(f'`{p}`' for p in origin['paths'])}")
        elif origin.get("hf"):
            hf = origin["hf"]
            split = "/".join(str(hf[k]) for k in ("path", "name", "split") if hf.get(k))
            lines.append(f"- `{corpus}`: Hugging Face dataset `{split}`")
        elif origin.get("edited_from"):
            lines.append(f"- `{corpus}`: ToEdit-edited from `{origin['edited_from']}`")
        elif origin.get("mix"):
            shares = ", ".join(f"`{m}` {s:g}" for m, s in origin["mix"].items())
            lines.append(f"- `{corpus}`: a mixture by document share: {shares}")
        if origin.get("license"):
            lines[-1] += f" (license {origin['license']})"
    sources = manifest.get("sources") or {}
    if sources.get("reference"):
        lines.append(f"- measured against the human reference `{sources['reference']}`")
    return lines or ["- not recorded"]


def _gate(manifest: dict) -> list[str]:
    validation = manifest.get("validation")
    if not validation:
        return ["Not gated: this release was written without a validation result."]
    verdict = "passed" if validation.get("success") else "FAILED"
    lines = [f"Suite `{validation.get('suite')}`: {verdict} (run `{manifest.get('run_id')}`).",
             "", "| expectation | observed | threshold | passed |", "|---|---|---|---|"]
    for row in validation.get("expectations") or []:
        lines.append(f"| `{row.get('expectation')}` | {_num(row.get('observed'))} | "
                     f"`{row.get('threshold')}` | {'yes' if row.get('success') else 'no'} |")
    return lines


def _parameters(manifest: dict) -> list[str]:
    parameters = manifest.get("parameters") or {}
    edit, prior = parameters.get("edit") or {}, parameters.get("prior") or {}
    lines = ["## Edit strategy", ""]
    if edit:
        # every parameter of the strategy, whatever it is; beta as the strategy resolved it
        values = {k: v for k, v in edit.items() if k != "strategy"}
        if parameters.get("beta") is not None:
            values["beta"] = parameters["beta"]
        lines += [", ".join([f"- strategy `{edit.get('strategy')}`",
                             *(f"{k} {v}" for k, v in values.items()),
                             f"seed {parameters.get('seed')}"])]
    else:
        lines += ["- not recorded"]
    lines += ["", "## Prior", "", f"- model `{manifest.get('model')}`"]
    lines += [f"- {k}: `{v}`" for k, v in prior.items() if k != "model"]
    return lines


def render(manifest: dict) -> str:
    """The card's text for a release whose manifest (less ``files``) is ``manifest``."""
    header = yaml.safe_dump(front_matter(manifest), sort_keys=False, allow_unicode=True)
    documents, tokens = manifest["documents"], manifest.get("tokens")
    formats = manifest.get("formats", [])
    lines = [
        f"# {manifest['name']} {manifest['version']}", "",
        f"Corpus `{manifest.get('corpus')}` of config `{manifest.get('config')}`, released by "
        f"semisynth (run `{manifest.get('run_id')}`, {manifest.get('created_at')})"
        + (" after passing its quality gate" if (manifest.get("validation") or {}).get("success")
           else "") + ". `manifest.json` lists every file with its sha256; "
        "`semisynth release verify` checks them.", "",
        "## Sources", "", *_sources(manifest), "",
        "## Size", "",
        f"- documents: {_num(documents)}",
        f"- tokens (scored by the prior): {_num(tokens) if tokens is not None else 'not measured'}",
        f"- parts: {manifest.get('parts')}, as "
        + " and ".join((f"`{PART_FOLDERS[f]}/part-NNNNN.{f}`" if f != "parquet" else "`data/train-NNNNN-of-MMMMM.parquet`") for f in formats), "",
        "## Gate", "", *_gate(manifest), "",
        *_parameters(manifest), "",
    ]
    if manifest.get("attributes"):
        lines += ["## Attributes", "",
                  f"`attributes/{ATTRIBUTE_SET}/part-NNNNN.jsonl.gz`, one line per document of "
                  "`documents/part-NNNNN.jsonl.gz` (and `data/train-NNNNN-of-MMMMM.parquet`) in the same "
                  "order (Dolma's attribute layout): "
                  f'`{{"id": ..., "attributes": {{"{PREFIX}ppl": [[0, len(text), value]], ...}}}}`.',
                  "", *[f"- `{PREFIX}{k}`: {ATTRIBUTE_MEANING[k]}" for k in ATTRIBUTES], "",
                  str(manifest["attributes"].get("meaning", "")), ""]
    loader = ('load_dataset("parquet", data_dir="<this folder>/data")' if "parquet" in formats
              else 'load_dataset("json", data_files="<this folder>/documents/*.jsonl.gz")')
    lines += ["## Loading", "", "```python", "from datasets import load_dataset", "",
              f"{loader}  # or load_dataset(\"<this folder>\") by this card's configs",
              "```", ""]
    return f"---\n{header}---\n\n" + "\n".join(lines)
