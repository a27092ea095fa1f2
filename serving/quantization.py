"""`switchboard quantize`: turn an FP32 sentence encoder into an artefact of an optimisation level, and measure it.

Levels (every `nn.Linear` quantized; embeddings and LayerNorms stay FP32):

- `fp32`: the model as it is (a copy; the baseline).
- `int8`: torch dynamic quantization, INT8 weights with per-channel scales, activations quantized on the fly (CPU;
  what serving uses by default).
- `int8-per-tensor`: the same with one scale per weight matrix: a little faster to make, less faithful.
- `bnb-int8`: bitsandbytes LLM.int8() (`Linear8bitLt`); `bnb-nf4`: bitsandbytes 4-bit NormalFloat (`Linear4bit`).
  On CUDA when torch sees a GPU, else on CPU, where bitsandbytes works but is slower than FP32.

The artefact is a folder `serving.model_path` can point at: the tokenizer and config, the quantized state dict and
`switchboard-quantization.json` (level, source, and the figures measured here). The report compares the artefact
with FP32 on size, speed and quality: cosine agreement of the embeddings and top-1 intent agreement (and accuracy,
given labelled utterances) with intent models trained on the shipped policies.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from serving.encoder import (
    ARTEFACT_MANIFEST,
    ARTEFACT_WEIGHTS,
    BNB_PRECISIONS,
    SentenceEncoder,
    _torch,
    default_device,
    level_precision,
    quantize_bnb,
    quantize_int8,
)
from serving.errors import ServingError
from serving.intents import IntentService

LEVELS = ("fp32", "int8", "int8-per-tensor", "bnb-int8", "bnb-nf4")
LABELLED = Path(__file__).resolve().parent / "data" / "labelled_utterances.yaml"


def labelled_utterances(path: Path = LABELLED) -> list[tuple[str, str, str]]:
    """(agent, intent, text) triples of a labelled set (agent -> intent -> sentences)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ServingError(f"cannot read labelled utterances {path}: {exc}") from None
    return [(str(agent), str(intent), str(text)) for agent, intents in data.items()
            for intent, texts in intents.items() for text in texts]


def apply_level(encoder: SentenceEncoder, level: str) -> SentenceEncoder:
    """A copy of the FP32 `encoder` at `level`."""
    if level not in LEVELS:
        raise ServingError(f"unknown level {level!r}; choose one of {', '.join(LEVELS)}")
    if encoder.precision != "fp32":
        raise ServingError("quantize an FP32 model: the input is already quantized")
    model = copy.deepcopy(encoder.model)
    precision = level_precision(level)
    device = default_device(precision)
    if precision in BNB_PRECISIONS:
        model = quantize_bnb(model, precision, device)
    elif precision == "int8":
        model = quantize_int8(model, per_channel=level == "int8")
    return SentenceEncoder(model, encoder.tokenizer, name=encoder.name, precision=precision, path=encoder.path,
                           device=device)


def state_size(encoder: SentenceEncoder) -> int:
    """Bytes of the model's serialized state dict (what the weights cost on disk and, roughly, in memory)."""
    torch = _torch()
    buffer = io.BytesIO()
    torch.save(encoder.model.state_dict(), buffer)
    return len(buffer.getvalue())


def sentences_per_second(encoder: SentenceEncoder, texts: Sequence[str], batch_size: int, min_s: float = 1.0,
                         rounds: int = 3) -> float:
    """Encoding throughput at `batch_size`: the best of `rounds` rounds of at least `min_s / rounds` seconds each,
    after a warm-up batch (the best round is the one least disturbed by other processes on the machine)."""
    batch = [texts[i % len(texts)] for i in range(batch_size)]
    encoder.encode(batch, batch_size)
    best = 0.0
    for _ in range(rounds):
        done, started = 0, time.perf_counter()
        while done == 0 or time.perf_counter() - started < min_s / rounds:
            encoder.encode(batch, batch_size)
            done += batch_size
        best = max(best, done / (time.perf_counter() - started))
    return best


@dataclass(frozen=True)
class Comparison:
    """An encoder at some level against FP32 on the same texts."""

    level: str
    fp32_bytes: int
    bytes: int
    fp32_per_s: dict[int, float]  # batch size -> sentences/s
    per_s: dict[int, float]
    cosine_mean: float
    cosine_min: float
    top1_agreement: float  # share of texts whose best intent is the same as with FP32
    fp32_accuracy: float | None  # on the labelled set
    accuracy: float | None

    def lines(self) -> list[str]:
        """The report, one line per figure."""
        speed = ", ".join(f"batch {size}: {self.per_s[size]:.0f} vs {self.fp32_per_s[size]:.0f} "
                          f"({self.per_s[size] / self.fp32_per_s[size]:.1f}x)" for size in sorted(self.per_s))
        out = [f"level {self.level}",
               f"  size:    {self.bytes / 1e6:.1f} MB vs FP32 {self.fp32_bytes / 1e6:.1f} MB "
               f"({self.bytes / self.fp32_bytes:.0%})",
               f"  speed:   sentences/s {speed}",
               f"  quality: cosine to FP32 mean {self.cosine_mean:.4f}, min {self.cosine_min:.4f}; "
               f"top-1 intent agreement {self.top1_agreement:.1%}"]
        if self.accuracy is not None and self.fp32_accuracy is not None:
            out.append(f"  intent accuracy on the labelled set: {self.accuracy:.1%} vs FP32 {self.fp32_accuracy:.1%} "
                       f"({(self.accuracy - self.fp32_accuracy) * 100:+.1f} points)")
        return out


def compare(fp32: SentenceEncoder, other: SentenceEncoder, level: str, training: Mapping[str, Mapping[str, Any]],
            labelled: Sequence[tuple[str, str, str]], *, batch_sizes: Sequence[int] = (1, 32),
            min_s: float = 1.0) -> Comparison:
    """Measure `other` against `fp32` on the labelled texts (intent models trained on `training` with each)."""
    texts = [text for _, _, text in labelled]
    if not texts:
        raise ServingError("no labelled utterances to compare on")
    reference, candidate = fp32.encode(texts), other.encode(texts)
    cosine = (reference * candidate).sum(axis=1)
    queries = [(agent, text) for agent, _, text in labelled]
    known = [i for i, (agent, _) in enumerate(queries) if agent in training]
    fp32_predictions = IntentService.build(fp32, training).recognise([queries[i] for i in known])
    predictions = IntentService.build(other, training).recognise([queries[i] for i in known])
    agreement = float(np.mean([a.intent == b.intent for a, b in zip(fp32_predictions, predictions, strict=True)]))
    truth = [labelled[i][1] for i in known]
    fp32_accuracy = float(np.mean([p.intent == t for p, t in zip(fp32_predictions, truth, strict=True)]))
    accuracy = float(np.mean([p.intent == t for p, t in zip(predictions, truth, strict=True)]))
    return Comparison(level, state_size(fp32), state_size(other),
                      {size: sentences_per_second(fp32, texts, size, min_s) for size in batch_sizes},
                      {size: sentences_per_second(other, texts, size, min_s) for size in batch_sizes},
                      float(cosine.mean()), float(cosine.min()), agreement, fp32_accuracy, accuracy)


def save_artefact(encoder: SentenceEncoder, output: Path, level: str, source: str,
                  comparison: Comparison | None = None) -> Path:
    """Write `encoder` (at `level`) as a folder `SentenceEncoder.load` reads; replaces an earlier artefact there."""
    torch = _torch()
    if output.exists():
        if not (output / ARTEFACT_MANIFEST).is_file():
            raise ServingError(f"{output} exists and is not a `switchboard quantize` artefact; choose a new folder")
        shutil.rmtree(output)
    output.mkdir(parents=True)
    encoder.tokenizer.save_pretrained(str(output))
    if level == "fp32":
        encoder.model.save_pretrained(str(output))
    else:
        encoder.model.config.save_pretrained(str(output))
        torch.save(encoder.model.state_dict(), output / ARTEFACT_WEIGHTS)
    manifest: dict[str, Any] = {"model": encoder.name, "level": level, "source": source,
                                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                                "torch": str(torch.__version__), "device": encoder.device}
    if level in BNB_PRECISIONS:
        manifest["bitsandbytes"] = str(_bitsandbytes_version())
    if comparison is not None:
        manifest["report"] = asdict(comparison)
    (output / ARTEFACT_MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return output


def _bitsandbytes_version() -> str:
    from serving.encoder import _bitsandbytes

    return str(_bitsandbytes().__version__)


def artefact_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
