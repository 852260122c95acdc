"""Per-decision plugins: request and answer transforms that run around the model call.

* `plugins.base`: the contract (`Plugin`), per-request `PluginState`, `Blocked` and `Reroute`.
* `plugins.guards`: `jailbreak` (graduated block / reroute / warn) and `pii` (block, redact,
  mask and restore, streams included).
* `plugins.transform`: `fast_response`, `params`, `system_prompt`, `headers`.
* `plugins.response_guard`: `response_guard` (system-prompt leaks, injected instructions echoed).
* `plugins.chain`: `PluginChain`, a decision's plugins in the documented order (see there).
"""
