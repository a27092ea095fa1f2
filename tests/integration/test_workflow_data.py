"""The issue's code example, `examples/data_processing.py`, on a real stack: deployed as a plugin through a real
entry point, started with `switchboard workflow run`, it fetches JSON from an HTTP server this test starts, turns it
into a table with pandas_processor and uploads it with s3_uploader to the stack's SeaweedFS."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from agents.workflows.storage import S3Store
from infra.embedded import EmbeddedStack
from infra.testing import embedded_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

ROOT = Path(__file__).resolve().parents[2]
ROWS = [{"sku": "A1", "qty": 2, "price": 9.5}, {"sku": "B2", "qty": 1, "price": 120.0}]


@pytest.fixture
async def shop() -> AsyncIterator[str]:
    async def items(request: web.Request) -> web.Response:
        return web.json_response(ROWS)

    app = web.Application()
    app.router.add_get("/items", items)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/items"
    await runner.cleanup()


def _install_example(plugins: Path) -> str:
    """A real entry point for the example (what `pip install` of a package declaring it would leave); the
    PYTHONPATH that makes it and `examples` importable."""
    dist = plugins / "switchboard_examples-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: switchboard-examples\nVersion: 1.0\n",
                                   encoding="utf-8")
    (dist / "entry_points.txt").write_text(
        "[switchboard.workflows]\ndata_processing = examples.data_processing:DataProcessingFlow\n", encoding="utf-8")
    return os.pathsep.join(filter(None, [str(plugins), str(ROOT), os.environ.get("PYTHONPATH")]))


async def test_the_issue_example_fetches_transforms_and_stores(tmp_path: Path, shop: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", _install_example(tmp_path / "plugins"))
    settings = embedded_settings(tmp_path / "stack", workers={"count": 1})
    stack = EmbeddedStack(settings)
    try:
        await stack.up()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}, **settings.environment()}
        ran = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "infra.cli", "workflow", "run", "data_processing", "--input",
                             json.dumps({"url": shop}), "--timeout", "120"],
            env=env, capture_output=True, text=True, timeout=180, check=False)
        assert ran.returncode == 0, ran.stderr[-2000:]
        result = json.loads(ran.stdout)
        output = result["output"]
        assert result["status"] == "succeeded" and output["bucket"] == settings.s3.bucket
        assert output["key"] == f"results/data_processing/{result['run_id']}/store_result.json"
        assert output["uri"] == f"s3://{settings.s3.bucket}/{output['key']}"
        store = S3Store.from_settings(settings, wait_s=10)
        try:
            stored = json.loads(await store.read(output["uri"]))
        finally:
            await store.close()
        # the table as fetched (JSON objects cross the bus with sorted keys, so the columns come sorted)
        assert stored == {"columns": ["price", "qty", "sku"], "rows": ROWS}
    finally:
        stack.down()
