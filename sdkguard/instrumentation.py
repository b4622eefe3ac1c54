"""sdkguard as an OpenTelemetry instrumentation: `SdkguardInstrumentor`.

The distribution registers it under the `opentelemetry_instrumentor` entry point group with
the name `sdkguard`, so `opentelemetry-instrument python app.py` installs sdkguard as it loads
any instrumentation, and `OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=sdkguard` leaves it out. In
code:

    from sdkguard.instrumentation import SdkguardInstrumentor

    SdkguardInstrumentor().instrument(max_attempts=8)   # policy fields as keywords
    SdkguardInstrumentor().uninstrument()               # sdkguard.uninstall()

`opentelemetry-instrumentation` is not a dependency of sdkguard: when it is installed, the
class is a real `BaseInstrumentor`; otherwise it has the same methods on its own.
`ANTHROPIC_REQUIREMENT` is the SDK range sdkguard supports ("anthropic >= 0.93, < 3"), what
`instrumentation_dependencies()` returns.

`import sdkguard` does not import this module (nor OpenTelemetry's instrumentation package).
"""

from __future__ import annotations

from sdkguard._instrumentor import ANTHROPIC_REQUIREMENT, SdkguardInstrumentor

__all__ = ["ANTHROPIC_REQUIREMENT", "SdkguardInstrumentor"]
