"""`benchmarks.startup` in a small real run (both policies, one start each, a few requests, the
import profile): the JSON has the issue's result format, the numbers are positive and agree with
each other, and the last printed line is the summary. No timing thresholds."""

from __future__ import annotations

import json
import subprocess
import sys

from benchmarks import startup


def test_generated_prompts_cover_every_path_of_the_neural_policy():
    texts = startup.prompts(400)
    assert len(texts) == 400
    assert len(set(texts)) < len(texts)  # exact repeats (cache hits)
    assert any("@example.com" in t for t in texts) and any(t in startup.JAILBREAKS for t in texts)
    assert startup.prompts(400) == texts  # seeded: every run sends the same traffic


def test_a_quick_run_writes_the_result_format(tmp_path):
    out = tmp_path / "startup.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.startup", "--quick", "--requests", "24", "--imports",
         "--cache-dir", str(tmp_path / "cache"), "--json", str(out)],
        capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    summary = result["summary"]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == summary  # the last line printed
    assert set(summary) == {"heuristic", "neural"}
    for name in ("heuristic", "neural"):
        entry = summary[name]
        assert set(entry) == {"ready_s", "rss_mb_after_requests"}  # 24 requests, not 1,000
        assert entry["ready_s"] > 0 and entry["rss_mb_after_requests"] > 0
        details = result["details"][name]
        [run] = details["runs"]
        assert run["ready_s"] == entry["ready_s"] and run["rss_mb_after_requests"] == entry["rss_mb_after_requests"]
        assert 0 < run["rss_mb_at_ready"] <= run["peak_rss_mb"] and run["rss_mb_after_requests"] <= run["peak_rss_mb"]
        assert run["traffic"]["sent"] == 24 and run["traffic"]["statuses"] == {"200": 24}
        assert sum(run["traffic"]["decisions"].values()) == 24
        imports = details["imports"]
        assert imports["modules_imported"] > 0 and imports["import_s_total"] > 0
        assert "sigroute" in imports["top_packages"]
    # the neural replica runs its encoder on ONNX Runtime; the heuristic one has no encoder. Its PII
    # signal runs sigroute's own recognizers: no presidio, spaCy or PyTorch in either replica.
    neural_heavy = result["details"]["neural"]["imports"]["heavy_loaded"]
    assert "onnxruntime" in neural_heavy
    assert not {"presidio_analyzer", "spacy", "torch"} & set(neural_heavy), neural_heavy
    assert "onnxruntime" not in result["details"]["heuristic"]["imports"]["heavy_loaded"]
    assert result["config"]["runs"] == 1 and result["config"]["requests"] == 24
    assert result["targets"]["neural"] == {"ready_s": 5.0, "rss_mb_after_1000": 400.0}
