"""The `s3_uploader` executor: put a task's data into S3 and return where it is.

Without params it uploads the output of the task's dependencies as JSON to the configured bucket (`s3.bucket`) at
`results/<workflow>/<run id>/<task>.json`: a key that depends only on the run, so running it again overwrites the
same object instead of leaving a second one. Another store is given by `endpoint_url`, `bucket` and credentials in
params (which then travel in the task command: prefer the settings for secrets).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from agents.workflows.base import BaseExecutor, upstream
from agents.workflows.errors import PermanentError
from agents.workflows.storage import S3Store, S3Target
from infra.config import Settings, load_settings

__all__ = ["S3UploaderExecutor"]


class S3UploaderExecutor(BaseExecutor):
    """Upload `data` (JSON, or text/bytes-as-text with a non-JSON `content_type`) to `bucket`/`key`.

    Output: `{uri, bucket, key, size, content_type}`. An unreachable store is a transient failure (retried by the
    task's policy); a refused upload (no such bucket, access denied) is reported the same way, with what to check.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings

    def defaults(self, task: str, depends_on: Sequence[str]) -> Mapping[str, Any]:
        found: dict[str, Any] = {"key": f"results/{{{{run.workflow}}}}/{{{{run.id}}}}/{task}.json"}
        if depends_on:
            found["data"] = upstream(depends_on)
        return found

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    async def execute(self, params: Mapping[str, Any]) -> Any:
        if "data" not in params:
            raise PermanentError("s3_uploader: give `data` (or a dependency, whose output is uploaded)")
        key = str(params.get("key") or "").lstrip("/")
        if not key:
            raise PermanentError("s3_uploader: give `key`, the object's name in the bucket")
        content_type = str(params.get("content_type") or "application/json")
        data = params["data"]
        if content_type == "application/json" or not isinstance(data, str):
            body = json.dumps(data, sort_keys=True, default=str).encode()
        else:
            body = data.encode()
        store = S3Store(self._target(params), wait_s=0)
        try:
            uri = await store.put(key, body, content_type)
        finally:
            await store.close()
        return {"uri": uri, "bucket": store.target.bucket, "key": key, "size": len(body),
                "content_type": content_type}

    def _target(self, params: Mapping[str, Any]) -> S3Target:
        if params.get("endpoint_url"):
            missing = [name for name in ("bucket", "access_key_id", "secret_access_key") if not params.get(name)]
            if missing:
                raise PermanentError(f"s3_uploader: with endpoint_url, also give {', '.join(missing)}")
            return S3Target(str(params["endpoint_url"]), str(params["bucket"]), str(params["access_key_id"]),
                            str(params["secret_access_key"]), str(params.get("region") or "us-east-1"))
        configured = S3Target.from_settings(self.settings)
        return dataclasses.replace(configured, bucket=str(params.get("bucket") or configured.bucket))
