"""Our Triton model names and the prefix that lets our repository join a Triton repository holding other
models. Standard library only: the orchestrator, the export and the gpt_decoder and s2mel models all
import it.

Each model has a logical name (`vocoder`, `s2mel_estimator`, ...), the name in the code, the metrics, the
Sentry events and /readyz. Triton serves it as `<prefix><logical name>` (`tts_vocoder` with the prefix
`tts_`; the prefix is empty by default). The export writes the folders and config names with the prefix
(`python -m export --model-prefix`), the orchestrator calls them with it (TRITON_MODEL_PREFIX), and s2mel
reads it from its own served name to call its estimator.
"""

from __future__ import annotations

import re

# Characters Triton accepts in a model name that are also safe in a folder name, a URL path
# (/v2/models/<name>) and a Prometheus label value. Empty: no prefix.
MODEL_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9_.-]*")


def check_model_prefix(prefix: str) -> str:
    """`prefix` when it may start our served model names; ValueError otherwise."""
    if not MODEL_PREFIX_PATTERN.fullmatch(prefix):
        raise ValueError(f"model prefix {prefix!r} may only hold letters, digits, '_', '.' and '-'")
    return prefix


def prefix_of(served_name: str, name: str) -> str:
    """The prefix of `served_name`, the name Triton serves our model `name` under: what comes before the
    last `name` in it (prefix_of("tts_s2mel", "s2mel") == "tts_"). A test copy of a model with a suffix of
    its own (`s2mel_bls`, `tts_s2mel_bls`) has the prefix of the model it copies."""
    prefix, found, _ = served_name.rpartition(name)
    if not found:
        raise ValueError(f"Triton model {served_name!r} is not <prefix>{name}: its folder or config name was changed")
    return check_model_prefix(prefix)
