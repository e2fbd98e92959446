"""Passive inventory: what a device said in a vendor's own 43/14 read, on the asset, shown by
the API and the portal's asset list (escaped: it is text from the plant network)."""

from __future__ import annotations

from tests.test_api_access import Api, api
from tests.test_identity_helpers import env

__all__ = ["api", "env"]


async def test_device_identity_is_stored_and_shown_escaped(api: Api) -> None:
    authz = api.env.services.authz
    identity = {"vendor": "Acme <script>", "product": "PLC-9", "revision": "4.2"}
    assert await authz.record_inventory("plc-1", identity, api.env.clock.now)
    assert not await authz.record_inventory("plc-1", identity, api.env.clock.now)  # same
    root = await api.login("root")
    listed = (await root.client.get("/api/v1/assets")).json()
    (plc,) = [a for a in listed if a["name"] == "plc-1"]
    assert (plc["ot_vendor"], plc["ot_product"], plc["ot_revision"]) == (
        "Acme <script>", "PLC-9", "4.2",
    )  # fmt: skip
    assert plc["ot_seen_at"] is not None and plc["modbus_port"] is None
    page = (await root.client.get("/admin/assets")).text
    assert "Acme &lt;script&gt; PLC-9 4.2" in page and "<script>" not in page.split("<main")[1]
