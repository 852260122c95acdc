"""sigroute: a semantic model-router gateway, and the Python SDK to talk to it.

This file is the root of the installed ``sigroute`` package: the repository's top-level folders
are its subpackages (``pyproject.toml`` maps ``sigroute.gateway`` to ``gateway/`` and so on), so
nothing of ours but ``sigroute`` lands in site-packages.

The names below are the SDK, which needs only httpx (``pip install sigroute``); the gateway itself
(``sigroute.gateway.app``, ``sigroute serve``) needs the ``server`` extra
(``pip install 'sigroute[server]'``). They are imported on first use, so ``import sigroute`` is
cheap and ``import sigroute.signals`` does not drag the client along::

    from sigroute import Client

    with Client("http://127.0.0.1:8080", api_key="sk-my-key") as client:
        answer = client.chat("Why does my Python loop never end?")
        print(answer.routing.decision, answer.routing.model, answer.text)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# the SDK's public names, all defined in sigroute.gateway.client
_SDK_NAMES = (
    "Client", "AsyncClient", "RoutedCompletion", "RoutedMessage", "RoutedResponse", "RoutingInfo", "SignalVerdict",
    "Explanation",
    "ChatStream", "AsyncChatStream",
    "SigrouteError", "BadRequest", "AuthenticationError", "PermissionDenied", "NotFound",
    "FeedbackNotSupported", "RateLimited", "UpstreamError", "Unavailable", "StreamBroken",
    "APIConnectionError", "APITimeoutError",
)

__all__ = ["__version__", *_SDK_NAMES]


def __getattr__(name: str) -> Any:
    if name in _SDK_NAMES:
        from sigroute.gateway import client

        value = getattr(client, name)
        globals()[name] = value   # later look-ups skip this function
        return value
    raise AttributeError(f"module 'sigroute' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SDK_NAMES))
