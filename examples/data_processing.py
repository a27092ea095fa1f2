"""The workflow engine issue's example, as written (imports adapted): fetch JSON over HTTP, turn it into a table
with pandas, store the table in S3. Deploy it by registering the class in a package's entry points:

    [project.entry-points."switchboard.workflows"]
    data_processing = "examples.data_processing:DataProcessingFlow"

then `switchboard workflow run data_processing --input '{"url": "http://..."}'`. `transform_data` and
`store_result` need no params: `pandas_processor` takes its dependency's output (an `http_client` answer: its JSON
records) and `s3_uploader` uploads its dependency's output to `s3.bucket` at `results/data_processing/<run>/
store_result.json`; the run's output is the uploader's `{uri, bucket, key, size, content_type}`.
"""

from agents.workflows import Task, Workflow


class DataProcessingFlow(Workflow):
    def __init__(self):  # type: ignore[no-untyped-def]
        super().__init__(name="data_processing")

    def define(self):  # type: ignore[no-untyped-def]
        fetch = Task("fetch_data", executor="http_client", params={"url": "{{input.url}}"})
        transform = Task("transform_data", executor="pandas_processor", depends_on=[fetch])
        store = Task("store_result", executor="s3_uploader", depends_on=[transform])
        self.add_tasks([fetch, transform, store])
