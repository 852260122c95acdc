"""The plugin latency benchmark runs end to end and reports what the issue asks for."""

from __future__ import annotations

import json

from benchmarks import plugins_latency


def test_plugins_latency_smoke(tmp_path, capsys):
    out = tmp_path / "plugins.json"
    assert plugins_latency.main(["--requests", "6", "--warmup", "2", "--json", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["per_plugin_p50_ms"]) == {"pii", "params", "system_prompt", "headers", "response_guard",
                                                 "fast_response", "jailbreak", "jailbreak_own_embedding",
                                                 "hallucination"}
    assert isinstance(summary["chain_p50_ms"], float)
    full = json.loads(out.read_text())
    assert full["summary"] == summary
    # every configuration measured every request, clean and with findings
    assert all(s["clean"]["n"] == 3 and s["findings"]["n"] == 3 for s in full["self_ms"].values())
