"""Frozen description of a MusicGen / AudioGen language model and of how to sample from it."""

from __future__ import annotations

from dataclasses import dataclass

# Text tokens a prompt may have: fixes the cross-attention shape of a captured step. T5 prompts for MusicGen are
# typically 10-40 tokens; audiocraft sets no limit, 256 leaves room for long descriptions.
MAX_TEXT_TOKENS = 256


@dataclass(frozen=True)
class LMConfig:
    """Transformer LM over K parallel codebook streams with a delay pattern.

    Args:
        dim / num_heads / num_layers / ffn_dim: transformer shape (small 1024/16/24/4096).
        n_q: codebook streams (4 mono, 8 stereo); card: entries per codebook; id `card` is the special token.
        delays: delay of each stream in steps ([0, 1, 2, 3]; stereo [0, 0, 1, 1, 2, 2, 3, 3]).
        text_dim: width of the text encoder's states (768 for t5-base); projected to `dim` when `cond_proj`.
        cross_attention: the text is read through cross-attention (MusicGen, AudioGen). False for MusicGen-Melody,
            whose text states and chroma are instead prepended to the sequence (no cross-attention weights at all).
        chroma_length / n_chroma / chroma_rate: melody conditioning: `chroma_length` one-hot chroma frames of
            `n_chroma` bins (235 x 12 for a 30 s segment) at `chroma_rate` frames per second (32 kHz / hop 4096);
            chroma_length 0 = no melody conditioning.
        max_duration: seconds the model was trained on (30 MusicGen, 10 AudioGen); sets the context.
        frame_rate: codec frames per second (50).
        norm_eps, max_period: LayerNorm epsilon and sinusoid period.
    """

    dim: int = 1024
    num_heads: int = 16
    num_layers: int = 24
    ffn_dim: int = 4096
    n_q: int = 4
    card: int = 2048
    delays: tuple[int, ...] = (0, 1, 2, 3)
    text_dim: int = 768
    cond_proj: bool = True
    max_duration: float = 30.0
    frame_rate: float = 50.0
    norm_eps: float = 1e-5
    max_period: float = 10000.0
    channels: int = 1
    cross_attention: bool = True
    chroma_length: int = 0
    n_chroma: int = 12
    chroma_rate: float = 32000 / 4096

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if len(self.delays) != self.n_q:
            raise ValueError(f"{self.n_q} codebooks need {self.n_q} delays, got {self.delays}")
        if self.n_q % self.channels:
            raise ValueError(f"{self.n_q} codebooks cannot be split over {self.channels} channels")
        # The published variants: text by cross-attention and no chroma, or chroma + text prepended (melody).
        if self.cross_attention == (self.chroma_length > 0):
            raise ValueError("an LM reads text by cross-attention or is a melody LM with a prepended chroma "
                             f"(chroma_length > 0), not both or neither (cross_attention={self.cross_attention}, "
                             f"chroma_length={self.chroma_length})")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def special(self) -> int:
        return self.card

    @property
    def max_delay(self) -> int:
        return max(self.delays)

    @property
    def max_frames(self) -> int:
        """Frames in one trained segment (1500 for 30 s at 50 Hz)."""
        return int(self.max_duration * self.frame_rate)

    @property
    def context(self) -> int:
        """Audio positions a KV cache holds: the leading special step, the trained frames and the delay tail."""
        return 1 + self.max_frames + self.max_delay

    @property
    def takes_melody(self) -> bool:
        return self.chroma_length > 0

    @property
    def max_prefix(self) -> int:
        """Positions in front of the audio at most: the chroma and the longest text (melody LMs), else none."""
        return self.chroma_length + MAX_TEXT_TOKENS if self.takes_melody else 0

    @property
    def max_positions(self) -> int:
        """Rows of the position table: the prefix, then the audio context."""
        return self.max_prefix + self.context


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is drawn. Defaults are audiocraft's (top-k 250, temperature 1, CFG 3).

    `top_p > 0` takes precedence over `top_k`; `top_k == 1` or `temperature == 0` is greedy.
    """

    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    cfg_coef: float = 3.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")
        if not self.cfg_coef >= 0:
            raise ValueError(f"cfg must be >= 0, got {self.cfg_coef}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


@dataclass(frozen=True)
class ReplanConfig:
    """How a stream outlives the trained context: re-prompt from the last `keep_seconds` of frames.

    The new context is prefilled `chunk` columns per step in the background while the old one keeps generating,
    then takes over at a column boundary, so the token stream and the audio never pause.
    """

    keep_seconds: float = 12.0  # audiocraft keeps 12 s (extend_stride 18 s of a 30 s window)
    chunk: int = 64
