"""An order workflow: charge the card, cool off, wait for the shipment, announce it.

    cd examples && flowforge dev .
    flowforge send order/created -d '{"order_id": "123", "customer": "Alice", "total": 99.99}'
    flowforge send order/shipped -d '{"order_id": "123", "carrier": "UPS"}'
"""

import flowforge
from flowforge import step


async def charge_card(total: float) -> dict:
    # A real app calls its payment provider here. A failure raises, and FlowForge
    # retries the step with backoff; the charge is recorded once it succeeds, so a
    # later failure in the workflow never charges twice.
    return {"charged": round(total, 2), "currency": "USD"}


@flowforge.function(
    id="process-order",
    trigger=flowforge.trigger.event("order/created"),
    retries=3,
)
async def process_order(ctx: flowforge.Context):
    charge = await step.run("charge-card", charge_card, ctx.event.data["total"])
    await step.sleep("cool-off", "10s")
    shipped = await step.wait_for_event(
        "wait-shipped", event="order/shipped", match="data.order_id", timeout="1h"
    )
    await step.send_event(
        "notify", name="order/processed", data={"order_id": ctx.event.data["order_id"]}
    )
    return {"charged": charge, "shipped": shipped is not None}


@flowforge.function(id="thank-customer", trigger=flowforge.trigger.event("order/processed"))
def thank_customer(ctx: flowforge.Context):
    # A plain `def` works too: steps return their values directly.
    note = step.run("write-note", lambda: f"Thank you for order {ctx.event.data['order_id']}!")
    return {"note": note}
