"""FlowForge for Python: durable functions made of memoized, retried steps.

```python
import flowforge
from flowforge import step

@flowforge.function(id="hello", trigger=flowforge.trigger.event("app/hello"))
async def hello(ctx: flowforge.Context):
    name = await step.run("greet", lambda: f"hello {ctx.event.data['name']}")
    await step.sleep("nap", "10s")
    return {"greeting": name}

flowforge.App("my-app").serve(port=8000)   # or mount flowforge.App(...) in FastAPI
```
"""

from ._app import App, Function, declared_functions, function, hashed_signing_key, trigger
from ._client import Client, FlowForgeError
from ._errors import NonRetriableError, RetryAfterError, StepError
from ._execution import Context, Event, Step, step

__all__ = [
    "App",
    "Client",
    "Context",
    "Event",
    "FlowForgeError",
    "Function",
    "NonRetriableError",
    "RetryAfterError",
    "Step",
    "StepError",
    "declared_functions",
    "function",
    "hashed_signing_key",
    "step",
    "trigger",
]
__version__ = "0.1.0"
