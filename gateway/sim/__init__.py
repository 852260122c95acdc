"""The simulated upstream: a test double, kept apart from the gateway's production code.

`server` is an OpenAI-compatible HTTP server (`sigroute sim`) whose models answer the project's
own multiple-choice questions with configured accuracy, latency, prices and injected faults;
`replay` loads real recorded outcomes (`sigroute sim --outcomes DIR`) so that every model answers
a known question exactly as it really did. Tests, benchmarks and the demo use it; the gateway never
imports it while serving.
"""

from sigroute.gateway.sim.server import *  # noqa: F401,F403 - the simulator's public names
from sigroute.gateway.sim.server import __all__  # noqa: F401
