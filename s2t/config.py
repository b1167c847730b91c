"""Training configuration: one dataclass, filled from YAML presets and `key=value` overrides.

    cfg = load_config("configs/train/recommended.yaml")
    cfg = load_config(["configs/train/recommended.yaml", "configs/train/cpu_scale.yaml"],
                      ["batch_size=64", "loss_weights.clip=0.5"])

Files are applied left to right over the dataclass defaults, then the overrides. Every key is
checked: an unknown key or a value of the wrong type is an error that lists what is valid.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from preprocess import settings
from preprocess.settings import ConfigError


DEFAULT_LOSS_WEIGHTS = {
    "supcon": 1.0,  # supervised contrastive loss over video embeddings (same label = positive)
    "clip": 1.0,    # symmetric video-text contrastive loss; 0 turns it off
    "ce": 6.0,      # decoder cross-entropy (translation). The recipe said 2; at 2 the decoder is the
                    # part left under-trained (625 steps x 128: CE 6 halves decoder WER on unseen
                    # signers, +12 BLEU on unseen sentences; README "Unseen people and new sentences")
}


def loss_names() -> list[str]:
    """The losses a config can weigh: those registered in s2t.losses.LOSSES."""
    from .losses import LOSSES
    return list(LOSSES)


class LossWeights(dict):
    """Loss name -> weight, for the losses registered in `s2t.losses.LOSSES` (the trainer sums
    weight * term over them; 0 or not listed = off). DEFAULT_LOSS_WEIGHTS, then what the config
    sets: YAML `loss_weights: {supcon: 1.0, clip: 1.0, ce: 2.0}`, override `loss_weights.clip=0`.
    Read as a mapping or by attribute (`cfg.loss_weights.clip`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(DEFAULT_LOSS_WEIGHTS)
        self.update(*args, **kwargs)

    def __getattr__(self, name: str) -> float:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self:
            return self[name]
        if name in loss_names():
            return 0.0
        raise AttributeError(f"no loss named {name!r}; registered: {loss_names()}")

    def __setattr__(self, name: str, value) -> None:
        self[name] = value

    def merge(self, value, key: str) -> None:
        """Settings loading (preprocess.settings.merge): names checked against the registry."""
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of loss name -> weight, e.g. {dict(DEFAULT_LOSS_WEIGHTS)}")
        for name, weight in value.items():
            if name not in loss_names():
                valid = ", ".join(f"{key}.{n}" for n in loss_names())
                raise ConfigError(f"unknown config key {f'{key}.{name}'!r}; valid keys: {valid}")
            self[name] = settings.coerce(weight, float, f"{key}.{name}")

    def __repr__(self) -> str:
        return f"LossWeights({', '.join(f'{k}={v!r}' for k, v in self.items())})"


@dataclass
class Augment:
    """Batched, on-device augmentation of normalised keypoints (training batches only)."""
    enabled: bool = True
    rotate_deg: float = 10.0   # in-plane rotation, uniform in [-r, r] degrees, per sample
    scale: float = 0.1         # isotropic scale factor in [1-s, 1+s]
    shift: float = 0.05        # translation in shoulder widths, per axis
    speed: float = 0.2         # playback speed factor in [1-s, 1+s] (time resampling)
    crop: float = 0.1          # drop up to this fraction of the clip (split between start and end)
    frame_drop: float = 0.05   # probability to mask out each frame
    hand_drop: float = 0.1     # probability to blank one hand for the whole sample
    # How people differ (0 = off): each sample as if signed by someone else (ARCHITECTURE.md §6)
    time_warp: float = 0.3     # non-uniform tempo inside the clip: local speed varies by up to +-this
    path_offset: float = 0.05  # smooth drift of each arm + hand, in shoulder widths (slow sinusoids)
    hand_rotate_deg: float = 20.0  # each hand turned about its wrist by up to this many degrees (3D)
    finger_noise: float = 0.03  # per-sample offset of every finger point from the wrist, in shoulder widths
    yaw_deg: float = 20.0      # camera viewpoint: the body turned about the vertical axis by up to this.
                               # Mirroring a left-handed signer mirrors their camera angle too: unseen
                               # left-handed Ret@1 0.783 -> 0.894 with it (DEMO_SCALE=signers)


@dataclass
class SampleBudget:
    """The schedule in training samples seen instead of optimizer steps (0 = keep the step setting),
    so that presets of different batch sizes get the same budget (the demo's scales are written so).
    Steps = ceil(samples / (batch_size * accumulation_steps))."""
    train: int = 0        # -> max_steps
    warmup: int = 0       # -> warmup_steps
    eval_every: int = 0   # -> eval_every and ckpt_every
    queue_start: int = 0  # -> queue_start

    def apply(self, cfg: "TrainConfig") -> None:
        per_step = cfg.batch_size * cfg.accumulation_steps
        for budget, keys in ((self.train, ["max_steps"]), (self.warmup, ["warmup_steps"]),
                             (self.eval_every, ["eval_every", "ckpt_every"]), (self.queue_start, ["queue_start"])):
            if budget < 0:
                raise ConfigError(f"samples.* must be >= 0, got {budget}")
            for key in keys if budget else []:
                setattr(cfg, key, math.ceil(budget / per_step))


@dataclass
class TrainConfig:
    """The defaults ARE the recommended recipe (docs/ARCHITECTURE.md §1): every preset under
    configs/train/ lists only what it changes, each value with its source."""
    # --- data --------------------------------------------------------------------------------
    components: list[str] = field(default_factory=lambda: ["pose", "left_hand", "right_hand"])
    max_frames: int = 128            # longer clips are uniformly subsampled to this many frames
    text_store: str | None = None    # which text store of the cache (None: its default)
    tokenizer: str = "wordpiece"     # "wordpiece": the cache's DistilBERT ids; "word": word vocab of train split
    max_text_len: int = 40           # tokens incl. [CLS]/[SEP]; longer sentences are truncated
    compact_vocab: bool = True       # decoder vocabulary = tokens seen in training (+ specials)
    samples_per_label: int = 4       # K of the P x K sampler (1 = plain length-bucketed batches)
    adapt_samples_per_label: bool = True  # K = min(samples_per_label, median clips per label, >= 2):
                                     # with one clip per sentence, no batch of 3 augmented copies each (§5)
    bucket_batches: int = 50         # length bucketing window, in batches (sort by length inside it)
    stream: bool = False             # read samples from the cache batch by batch (caches larger than memory)
    memory_budget_mb: int = 1024     # stream: decoded keypoints held in memory at most (LRU of storage chunks)
    prefetch_batches: int = 2        # batches made ahead on a background thread while the loop trains (0: in the loop)
    augment: Augment = field(default_factory=Augment)
    canonical_hand: str = "right"    # "right": mirror clips signed mainly with the left hand (x negated,
                                     # left/right landmarks swapped) at training, eval and translate;
                                     # unseen left-handed Ret@1 0.062 -> 0.783 (DEMO_SCALE=signers, §6)
    val_signers: list[str] = field(default_factory=list)  # signers held out as the val split
                                     # (their train rows become val: validation on unseen people)

    # --- model -------------------------------------------------------------------------------
    embed_dim: int = 512             # recipe: embed_dim 512 (the seed had 256)
    proj_dim: int = 256
    encoder_layers: int = 4          # recipe: 4-6 encoder layers
    decoder_layers: int = 3
    heads: int = 8
    ff_mult: int = 4
    dropout: float = 0.2             # recipe: dropout 0.2
    shared_head: bool = False        # recipe: dedicated Linear-ReLU-Linear heads; True = the seed's one head
                                     # for the contrastive loss AND the decoder input
    decoder_reads_embedding: bool = True  # the decoder also attends to the clip's (detached) CLIP embedding (§4)
    token_init: str = "random"       # "pretrained": decoder token embeddings start from the text model's
                                     # word embeddings (PCA to embed_dim; WordPiece tokenizer only)
    token_dropout: float = 0.2       # share of decoder input tokens replaced by [UNK] in training: the
                                     # decoder must read the video, not only continue the sentence (§5)
    text_encoder: str = "frozen"     # CLIP text side: "frozen" = the cache's sentence embeddings (fast);
                                     # "finetune" = the cache's text model (a local folder) trained with it
    text_encoder_layers: int = 2     # finetune: top transformer layers trained (0 = all, embeddings too)
    text_encoder_lr_scale: float = 0.1  # finetune: the text model's lr = lr * this (pretrained weights)

    # --- losses ------------------------------------------------------------------------------
    loss_weights: LossWeights = field(default_factory=LossWeights)
    temperature: float = 0.05        # SupCon temperature (recipe: 0.05; the seed had 0.07)
    clip_logit_scale_init: float = math.log(1 / 0.07)  # CLIP's init
    clip_logit_scale_max: float = math.log(100)        # CLIP's clamp
    label_smoothing: float = 0.1
    queue_size: int = 4096           # MoCo-style queue of past embeddings, ~32 batches of 128 (0 = off)
    queue_start: int = 2000          # step from which the queue is filled and used: only once the encoder
                                     # drifts slowly (XBM); keys of a fast-changing encoder collapse (§5)
    queue_keys: str = "pooled"       # "projected": queue the head outputs (they go stale as the heads
                                     # move); "pooled": queue pooled encoder outputs and the frozen text
                                     # embeddings, re-projected through the current heads at every step

    # --- optimisation ------------------------------------------------------------------------
    batch_size: int = 128            # recipe: batches of 128+, per micro-batch (effective batch =
    accumulation_steps: int = 1      # batch_size * accumulation_steps: raise it when 128 does not fit)
    lr: float = 3e-4                 # recipe: lr 3e-4
    weight_decay: float = 1e-4       # recipe: weight decay 1e-4
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.98])  # CLIP's beta2 (steadier at large batch)
    warmup_steps: int = 500
    min_lr_ratio: float = 0.1        # cosine decays to lr * min_lr_ratio at max_steps
    max_steps: int = 20000           # optimizer steps
    grad_clip: float = 1.0           # max global grad norm (0 = off)
    precision: str = "auto"          # auto (fp16 on CUDA, fp32 on CPU) | fp16 | bf16 | fp32
    max_bad_steps: int = 20          # stop after this many steps with a NaN/inf loss

    # --- bookkeeping -------------------------------------------------------------------------
    eval_every: int = 500
    log_every: int = 20
    ckpt_every: int = 1000
    keep_checkpoints: int = 3        # periodic step-N checkpoints kept besides last
    best_metric: str = "auto"        # val metric that picks best.safetensors (what `eval` scores): auto =
                                     # ret1_v2t (higher is better) with a CLIP loss, else ce (lower is better)
    samples: SampleBudget = field(default_factory=SampleBudget)  # schedule in samples (wins over steps)
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda | cuda:N

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        from preprocess.layout import COMPONENTS
        bad = [c for c in self.components if c not in COMPONENTS]
        if bad or not self.components:
            raise ConfigError(f"components: {bad or 'empty'} not valid; choose from {list(COMPONENTS)}")
        if self.canonical_hand not in ("none", "right"):
            raise ConfigError(f"canonical_hand must be 'none' or 'right', got {self.canonical_hand!r}")
        if self.canonical_hand != "none" and ("left_hand" in self.components) != ("right_hand" in self.components):
            raise ConfigError("canonical_hand mirrors left and right hands into each other: components "
                              f"must hold both hands or neither, got {self.components}")
        if self.queue_keys not in ("projected", "pooled"):
            raise ConfigError(f"queue_keys must be 'projected' or 'pooled', got {self.queue_keys!r}")
        if self.queue_keys == "pooled" and self.shared_head:
            raise ConfigError("queue_keys: pooled re-projects keys through the dedicated heads; the "
                              "shared head is applied per frame before pooling: use queue_keys: projected")
        if self.token_init not in ("random", "pretrained"):
            raise ConfigError(f"token_init must be 'random' or 'pretrained', got {self.token_init!r}")
        if self.token_init == "pretrained" and self.tokenizer != "wordpiece":
            raise ConfigError("token_init: pretrained needs tokenizer: wordpiece (the text model's own ids)")
        if self.decoder_reads_embedding and self.shared_head:
            raise ConfigError("decoder_reads_embedding needs the dedicated heads (shared_head: false)")
        if self.text_encoder not in ("frozen", "finetune"):
            raise ConfigError(f"text_encoder must be 'frozen' or 'finetune', got {self.text_encoder!r}")
        if self.text_encoder == "finetune" and self.loss_weights.clip <= 0:
            raise ConfigError("text_encoder: finetune trains the text model through the CLIP loss: "
                              "loss_weights.clip must be > 0")
        if self.tokenizer not in ("wordpiece", "word"):
            raise ConfigError(f"tokenizer must be 'wordpiece' or 'word', got {self.tokenizer!r}")
        if self.precision not in ("auto", "fp16", "bf16", "fp32"):
            raise ConfigError(f"precision must be auto|fp16|bf16|fp32, got {self.precision!r}")
        if self.batch_size % self.samples_per_label:
            raise ConfigError(f"batch_size ({self.batch_size}) must be a multiple of "
                              f"samples_per_label ({self.samples_per_label})")
        if self.embed_dim % self.heads:
            raise ConfigError(f"embed_dim ({self.embed_dim}) must be divisible by heads ({self.heads})")
        for name in ("max_frames", "batch_size", "accumulation_steps", "max_steps", "samples_per_label",
                     "embed_dim", "proj_dim", "encoder_layers", "heads", "log_every", "eval_every",
                     "ckpt_every", "max_text_len", "keep_checkpoints", "memory_budget_mb"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.prefetch_batches < 0:
            raise ConfigError(f"prefetch_batches must be >= 0, got {self.prefetch_batches}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ConfigError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        w = self.loss_weights
        unknown = [name for name in w if name not in loss_names()]
        if unknown:
            raise ConfigError(f"loss_weights: {unknown} are not registered losses; choose from {loss_names()}")
        if min(w.values()) < 0 or sum(w.values()) == 0:
            raise ConfigError(f"loss_weights must be >= 0 and not all 0, got {w}")

        def in_range(key: str, low: float, high: float = math.inf, low_in: bool = True, high_in: bool = False,
                     why: str = ""):
            """Refuse a value outside [low, high] / (low, high): here, before any work, not as a crash
            or a silently odd run later. NaN fails every comparison, so it is refused too."""
            value = self
            for part in key.split("."):
                value = getattr(value, part)
            if not ((value >= low if low_in else value > low) and (value <= high if high_in else value < high)):
                bounds = f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
                raise ConfigError(f"{key} = {value!r} is out of range: it must be in {bounds}{why}")

        in_range("lr", 0, low_in=False)
        in_range("weight_decay", 0)
        in_range("warmup_steps", 0)
        in_range("min_lr_ratio", 0, 1, high_in=True)
        in_range("grad_clip", 0)
        in_range("max_bad_steps", 0)
        in_range("dropout", 0, 1)
        in_range("label_smoothing", 0, 1)
        in_range("temperature", 0, low_in=False)
        in_range("queue_size", 0)
        in_range("queue_start", 0)
        in_range("ff_mult", 1)
        in_range("seed", 0)
        # a decoder of 0 layers cannot learn to translate: needed whenever its loss counts
        in_range("decoder_layers", 1 if w.ce > 0 else 0, why=" while loss_weights.ce > 0" if w.ce > 0 else "")
        for name in w:
            in_range(f"loss_weights.{name}", 0)
        in_range("clip_logit_scale_init", -math.inf, low_in=False)
        in_range("clip_logit_scale_max", self.clip_logit_scale_init, why=" (at least clip_logit_scale_init)")
        in_range("augment.rotate_deg", 0, 180, high_in=True)
        for name in ("scale", "speed", "crop", "frame_drop"):  # 1 would zero a clip / mask every frame
            in_range(f"augment.{name}", 0, 1)
        in_range("augment.shift", 0)
        in_range("augment.hand_drop", 0, 1, high_in=True)
        in_range("augment.time_warp", 0, 1, why=" (at 1 the local speed could reach 0)")
        in_range("augment.path_offset", 0)
        in_range("augment.hand_rotate_deg", 0, 180, high_in=True)
        in_range("augment.finger_noise", 0)
        in_range("augment.yaw_deg", 0, 90, high_in=True)
        in_range("token_dropout", 0, 1)
        in_range("text_encoder_layers", 0)
        in_range("text_encoder_lr_scale", 0, low_in=False)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "loss_weights": dict(self.loss_weights)}  # plain dict: YAML-safe


def load_config(paths: str | Path | list | tuple | None = None, overrides: list = ()) -> TrainConfig:
    """Defaults <- each YAML file in order <- each override (`key=value`, or a nested mapping).
    A sample budget (`samples.*`) is then turned into steps. Validated at the end."""
    cfg = settings.load(TrainConfig, paths, overrides)
    cfg.samples.apply(cfg)
    cfg.validate()
    return cfg


# Settings added after runs already existed, each with the value that reproduces those runs. A
# saved config that lacks one was trained without it: it must not pick up today's default (e.g. an
# old run evaluated with canonical_hand "right" would see mirrored clips it never trained on).
ABSENT_IN_OLD_RUNS = {
    "adapt_samples_per_label": False, "canonical_hand": "none", "decoder_reads_embedding": False,
    "token_dropout": 0.0, "queue_keys": "projected", "text_encoder": "frozen",
    "augment": {"time_warp": 0.0, "path_offset": 0.0, "hand_rotate_deg": 0.0, "finger_noise": 0.0,
                "yaw_deg": 0.0},
}


def config_from_dict(data: dict) -> TrainConfig:
    """Rebuild a config saved with `to_dict` (e.g. a run's config.yaml)."""
    cfg = TrainConfig()
    settings.merge(cfg, ABSENT_IN_OLD_RUNS)
    settings.merge(cfg, data)
    cfg.validate()
    return cfg
