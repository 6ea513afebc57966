"""IndexTTS-2's autoregressive GPT ("UnifiedVoice v2", `indextts/gpt/model_v2.py`).

A GPT-2 decoder over one sequence per utterance:

    [32 speaker latents + emo_vec] [speed_emb(1)] [speed_emb(0)]      34 conditioning embeddings
    [start_text, text ids..., stop_text]     + text positions 0..      text embeddings
    [start_mel, code_0, code_1, ...]         + mel positions 0..       mel embeddings

The GPT-2 body has no position table of its own (the official code nulls `wpe`); positions come from
the two learned tables added to the token embeddings. Hidden states go through the GPT-2 `ln_f` and
then `final_norm`; `mel_head` turns them into code logits. The `final_norm` hidden state at each mel
input token is the "latent" the s2mel stage consumes.

Conditioning: a Conformer + Perceiver turns w2v-BERT features into the 32 speaker latents, and a second
Conformer + single-latent Perceiver (width 1024) + `emovec_layer` + `emo_layer` into the emotion vector.

The GPT-2 body is written here (no transformers import) with gpt-fast style blocks: attention takes an
explicit boolean mask and an optional preallocated `KVCache` written at explicit slots, so that a
serving engine can run one decoding step over a batch of sequences of different lengths.

Attribute names follow the official `gpt.pth` keys (HF GPT-2 Conv1D layout `(in, out)` for
`gpt.h.N.attn.c_attn.weight` etc.).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from indextts2.checkpoint import CheckpointError, load_state_dict_strict, torch_load
from indextts2.checkpoint_version import VERSION_2_0
from indextts2.networks.conformer import ConformerEncoder
from indextts2.networks.perceiver import PerceiverResampler

# CAMPPlus embedding width (hard-coded in the official IndexTTS-2.5 `nn.Linear(192, model_dim)`).
CAMPPLUS_DIM = 192
# len(LANGUAGE_DICT) of the official IndexTTS-2.5 tokenizer module (99 whisper languages, yue, minnan,
# wuyu, dialect, zh/en, en/zh, common); the table has one more row.
NUM_LANGUAGES = 106

# ---------------------------------------------------------------------------------------------------
# GPT-2 body
# ---------------------------------------------------------------------------------------------------


class Conv1D(nn.Module):
    """HF GPT-2's "Conv1D": a Linear whose weight is stored (in, out), as the checkpoints have it."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


class KVCache(nn.Module):
    """Preallocated keys and values of one attention layer: (batch, heads, max_len, head_dim) each.

    `update` writes the new keys/values at explicit slots per sequence and returns the whole cache;
    the attention mask decides which slots a query may read. Slots never written stay zero, so a
    masked slot never turns the attention output into NaN.
    """

    def __init__(
        self,
        batch_size: int,
        max_len: int,
        heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        shape = (batch_size, heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(
        self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """slots (B, T) int64 cache positions of the T new tokens; k, v (B, heads, T, head_dim)."""
        index = slots[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
        self.k.scatter_(2, index, k.to(self.k.dtype))
        self.v.scatter_(2, index, v.to(self.v.dtype))
        return self.k, self.v

    def reset(self) -> None:
        self.k.zero_()
        self.v.zero_()


def causal_mask(length: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(1, 1, T, T) bool, True where query i may attend to key j (j <= i)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()[None, None]


class GPT2Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.c_attn = Conv1D(dim, 3 * dim)
        self.c_proj = Conv1D(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        cache: KVCache | None = None,
        cache_slots: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, dim). attn_mask: bool (B or 1, 1, T, S), True = may attend; every query row must
        allow at least one key. None means plain causal attention over these T tokens (no cache)."""
        batch, length, dim = x.shape
        q, k, v = self.c_attn(x).split(dim, dim=-1)
        q, k, v = (t.view(batch, length, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(cache_slots, k, v)
        if attn_mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.c_proj(out.transpose(1, 2).reshape(batch, length, dim))


class GPT2MLP(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.c_fc = Conv1D(dim, 4 * dim)
        self.c_proj = Conv1D(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-2's "gelu_new" is the tanh approximation.
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class GPT2Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = GPT2Attention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = GPT2MLP(dim)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        cache: KVCache | None = None,
        cache_slots: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask, cache, cache_slots)
        return x + self.mlp(self.ln_2(x))


class GPT2Model(nn.Module):
    """The GPT-2 stack without token or position tables: embeddings in, `ln_f` hidden states out."""

    def __init__(self, dim: int, layers: int, heads: int):
        super().__init__()
        self.h = nn.ModuleList(GPT2Block(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        caches: list[KVCache] | None = None,
        cache_slots: torch.Tensor | None = None,
    ) -> torch.Tensor:
        for i, block in enumerate(self.h):
            x = block(x, attn_mask, None if caches is None else caches[i], cache_slots)
        return self.ln_f(x)


class LearnedPositionEmbedding(nn.Module):
    """A learned position table; a module of its own so that the checkpoint key is `<name>.emb.weight`."""

    def __init__(self, max_len: int, dim: int):
        super().__init__()
        self.emb = nn.Embedding(max_len, dim)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.emb(positions)


# ---------------------------------------------------------------------------------------------------
# Sampling (per sequence; every control is a (B,) tensor so that a batch may mix settings)
# ---------------------------------------------------------------------------------------------------


@dataclass
class SamplingConfig:
    """Decoding controls of one sequence, with HF `generate` semantics.

    `penalize_prompt_ids`: the official call feeds HF `generate` dummy ids (all 1) plus the start code
    (`start_mel_token`) as its input_ids, so HF's repetition penalty also treats code 1 and the start
    code as already generated. True reproduces that (and the official outputs); False penalises only
    the codes this sequence generated.
    `min_codes`: HF's `min_new_tokens`: the stop code cannot be chosen before this many codes exist.
    With `max_codes` equal to it, a sequence has exactly that many codes (what benchmarks on random
    weights need to compare like with like).
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    repetition_penalty: float = 1.0
    max_codes: int | None = None  # None: max_mel_tokens - 1, the official default (infer_v2 passes 1500)
    min_codes: int = 0  # 0: the stop code may come first
    seed: int | None = None  # None: the global torch RNG (as the official code)
    penalize_prompt_ids: bool = True


def without_start_code(logits: torch.Tensor, start_code: int) -> torch.Tensor:
    """The logits with the start code removed from the candidates (set to -inf).

    A trained GPT never emits the start code; a random one can, and it is no semantic code (the codec
    cannot embed it), so both decoders drop it before the repetition penalty and the warpers. The
    official code leaves it in; on the golden data this changes no code.
    """
    logits = logits.clone()
    logits[:, start_code] = float("-inf")
    return logits


def apply_repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """HF repetition penalty: a seen code's positive logit is divided by the penalty, a negative one
    multiplied. scores (B, V); seen (B, V) bool; penalty (B,)."""
    penalty = penalty[:, None].to(scores.dtype)
    penalized = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalized, scores)


def suppress_stop_code(scores: torch.Tensor, stop_code: int, too_short: torch.Tensor) -> torch.Tensor:
    """HF's min_new_tokens processor: the stop code gets -inf in the rows still short of their
    `min_codes`. scores (B, V); too_short (B,) bool."""
    column = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
    column[stop_code] = True
    return scores.masked_fill(too_short[:, None].to(scores.device) & column, float("-inf"))


def apply_sampling_warpers(
    scores: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """HF's temperature, then top-k, then top-p warpers (in that order); removed codes get -inf.

    scores (B, V); temperature (B,) float; top_k (B,) int64, 0 = off; top_p (B,) float, 1.0 = off.
    """
    vocab = scores.shape[-1]
    scores = scores / temperature[:, None].to(scores.dtype)

    k = top_k.clamp(min=1, max=vocab)
    kth_best = scores.sort(dim=-1, descending=True).values.gather(1, (k - 1)[:, None])
    remove = (scores < kth_best) & (top_k > 0)[:, None]
    scores = scores.masked_fill(remove, float("-inf"))

    sorted_scores, order = scores.sort(dim=-1)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - top_p)[:, None].to(cumulative.dtype)
    remove_sorted[:, -1] = False  # always keep the best code
    remove = remove_sorted.scatter(1, order, remove_sorted) & (top_p < 1.0)[:, None]
    return scores.masked_fill(remove, float("-inf"))


def choose_next_codes(
    scores: torch.Tensor, do_sample: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """argmax for greedy rows, a multinomial draw from softmax(scores) for sampling rows. (B,) int64."""
    chosen = scores.argmax(dim=-1)
    if bool(do_sample.any()):
        drawn = torch.multinomial(scores.float().softmax(dim=-1), 1, generator=generator).squeeze(1)
        chosen = torch.where(do_sample, drawn, chosen)
    return chosen


@dataclass
class GenerationOutput:
    codes: torch.Tensor  # (n,) int64, without the stop code
    latents: torch.Tensor  # (n, dim) final_norm hidden state at each step's input token (s2mel latent)
    stopped: bool  # True when the stop code ended the sequence (it is not in `codes`)
    step_logits: torch.Tensor  # (steps, V) raw mel_head logits; steps = n, or n + 1 when stopped
    step_scores: torch.Tensor  # (steps, V) the logits after the repetition penalty and the warpers


# ---------------------------------------------------------------------------------------------------
# UnifiedVoice
# ---------------------------------------------------------------------------------------------------


class UnifiedVoice(nn.Module):
    """The IndexTTS-2 GPT with its conditioners. Built from the `gpt` section of config.yaml.

    `feature_dim` (w2v-BERT width, 1024), `emo_perceiver_dim` (1024), `perceiver_dim_head` (64) and
    `style_dim` (CAMPPlus width, 192) are hard-coded in the official code and kept as arguments with
    those defaults.

    `spk_cond_mode` is the official config key that tells the versions apart: "conformer" (IndexTTS-2.0:
    a speaker conformer + perceiver and `speed_emb`) or "campplus" (IndexTTS-2.5, `UnifiedVoice25`:
    `spk_emb_proj` of the CAMPPlus style and `lang_embedding`; `condition_module` is read by the official
    code but unused).
    """

    spk_cond_mode = "conformer"
    version = VERSION_2_0

    def __init__(
        self,
        model_dim: int,
        layers: int,
        heads: int,
        max_text_tokens: int,
        max_mel_tokens: int,
        number_text_tokens: int,
        number_mel_codes: int,
        start_text_token: int,
        stop_text_token: int,
        start_mel_token: int,
        stop_mel_token: int,
        emo_condition_module: Mapping[str, Any],
        condition_module: Mapping[str, Any] | None = None,
        condition_num_latent: int = 32,
        max_conditioning_inputs: int = 1,
        feature_dim: int = 1024,
        emo_perceiver_dim: int = 1024,
        perceiver_dim_head: int = 64,
        zero_conformer_padding: bool = True,
        style_dim: int = CAMPPLUS_DIM,
        num_languages: int = NUM_LANGUAGES,
    ):
        super().__init__()
        campplus = self.spk_cond_mode == "campplus"
        if not campplus and condition_module is None:
            raise TypeError("UnifiedVoice needs condition_module (the speaker conformer/perceiver)")
        self.model_dim = model_dim
        self.heads = heads
        self.max_text_tokens = max_text_tokens
        self.max_mel_tokens = max_mel_tokens
        self.number_mel_codes = number_mel_codes
        self.start_text_token = start_text_token
        self.stop_text_token = stop_text_token
        self.start_mel_token = start_mel_token
        self.stop_mel_token = stop_mel_token

        def conformer(cfg: Mapping[str, Any]) -> ConformerEncoder:
            return ConformerEncoder(
                input_dim=feature_dim,
                output_size=cfg["output_size"],
                attention_heads=cfg["attention_heads"],
                linear_units=cfg["linear_units"],
                num_blocks=cfg["num_blocks"],
                input_layer=cfg["input_layer"],
                zero_padding_after_glu=zero_conformer_padding,
            )

        # Each mode keeps its own order of creation: a seeded random initialisation (the demo presets)
        # draws the weights in that order, so another order would change the demo checkpoints.
        if campplus:
            self.spk_emb_proj = nn.Linear(style_dim, model_dim)
        else:
            self.conditioning_encoder = conformer(condition_module)
            self.perceiver_encoder = PerceiverResampler(
                model_dim,
                dim_context=condition_module["output_size"],
                num_latents=condition_num_latent,
                heads=condition_module["attention_heads"],
                dim_head=perceiver_dim_head,
                ff_mult=condition_module["perceiver_mult"],
            )
            self.speed_emb = nn.Embedding(2, model_dim)
        self.emo_conditioning_encoder = conformer(emo_condition_module)
        self.emo_perceiver_encoder = PerceiverResampler(
            emo_perceiver_dim,
            dim_context=emo_condition_module["output_size"],
            num_latents=1,
            heads=emo_condition_module["attention_heads"],
            dim_head=perceiver_dim_head,
            ff_mult=emo_condition_module["perceiver_mult"],
        )
        if campplus:
            self.text_embedding = nn.Embedding(number_text_tokens + 1, model_dim)
            self.lang_embedding = nn.Embedding(num_languages + 1, model_dim)
            self.emo_layer = nn.Linear(model_dim, model_dim)
            self.emovec_layer = nn.Linear(emo_perceiver_dim, model_dim)
        else:
            self.emovec_layer = nn.Linear(emo_perceiver_dim, model_dim)
            self.emo_layer = nn.Linear(model_dim, model_dim)
            self.text_embedding = nn.Embedding(number_text_tokens + 1, model_dim)
        self.mel_embedding = nn.Embedding(number_mel_codes, model_dim)
        self.gpt = GPT2Model(model_dim, layers, heads)
        self.mel_pos_embedding = LearnedPositionEmbedding(max_mel_tokens + 2 + max_conditioning_inputs, model_dim)
        self.text_pos_embedding = LearnedPositionEmbedding(max_text_tokens + 2, model_dim)
        self.final_norm = nn.LayerNorm(model_dim)
        self.text_head = nn.Linear(model_dim, number_text_tokens + 1)
        self.mel_head = nn.Linear(model_dim, number_mel_codes)

    # --- conditioning -------------------------------------------------------------------------------

    @property
    def speaker_latent_count(self) -> int:
        """Rows of speaker conditioning in the prefix (the perceiver's latents; 1 in IndexTTS-2.5)."""
        return int(self.perceiver_encoder.latents.shape[0])

    @property
    def uses_language(self) -> bool:
        """Whether the prefix takes a language id (IndexTTS-2.5's lang_embedding); 2.0 has none."""
        return False

    def get_conditioning(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Speaker latents. features (B, T, feature_dim) time-major; lengths (B,) valid frame counts.
        -> (B, condition_num_latent, model_dim)."""
        encoded, valid = self.conditioning_encoder(features, lengths)
        return self.perceiver_encoder(encoded, valid)

    def get_emo_conditioning(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The emotion perceiver output before `emovec_layer`. -> (B, emo_perceiver_dim)."""
        encoded, valid = self.emo_conditioning_encoder(features, lengths)
        return self.emo_perceiver_encoder(encoded, valid).squeeze(1)

    def get_emovec(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Emotion vector of an utterance. features (B, T, feature_dim); lengths (B,). -> (B, model_dim)."""
        return self.emo_layer(self.emovec_layer(self.get_emo_conditioning(features, lengths)))

    def merge_emovec(
        self,
        spk_features: torch.Tensor,
        emo_features: torch.Tensor,
        spk_lengths: torch.Tensor,
        emo_lengths: torch.Tensor,
        alpha: float = 1.0,
    ) -> torch.Tensor:
        """base + alpha * (emo - base); both vectors come from the *emotion* encoder. -> (B, model_dim)."""
        emo = self.get_emovec(emo_features, emo_lengths)
        base = self.get_emovec(spk_features, spk_lengths)
        return base + alpha * (emo - base)

    # --- embeddings ---------------------------------------------------------------------------------

    def conditioning_prefix(self, speaker_latents: torch.Tensor, emo_vec: torch.Tensor) -> torch.Tensor:
        """[speaker latents + emo_vec, speed_emb(1), speed_emb(0)]. (B, N, d), (B, d) -> (B, N + 2, d).

        The official code always appends both speed embeddings, whatever `use_speed` says.
        """
        batch = speaker_latents.shape[0]
        speed_ids = torch.tensor([1, 0], device=speaker_latents.device)
        speed = self.speed_emb(speed_ids).to(speaker_latents.dtype).unsqueeze(0).expand(batch, -1, -1)
        return torch.cat([speaker_latents + emo_vec.unsqueeze(1), speed], dim=1)

    def text_embeddings(self, text_ids: torch.Tensor) -> torch.Tensor:
        """Token + position embeddings of already framed text ids (B, L) (positions 0..L-1)."""
        positions = torch.arange(text_ids.shape[1], device=text_ids.device)
        return self.text_embedding(text_ids) + self.text_pos_embedding(positions).unsqueeze(0)

    def mel_embeddings(self, codes: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Code + mel-position embeddings. codes, positions (B, T) int64 -> (B, T, d)."""
        return self.mel_embedding(codes) + self.mel_pos_embedding(positions)

    def language_row(self, language: int | torch.Tensor, device: torch.device) -> torch.Tensor:
        """lang_embedding of one language id (an index into the official LANGUAGE_DICT). -> (d,)."""
        if not self.uses_language:
            raise ValueError("this GPT (IndexTTS-2.0) takes no language id")
        language = int(language)
        if not 0 <= language < self.lang_embedding.num_embeddings:
            raise ValueError(f"language id {language} outside [0, {self.lang_embedding.num_embeddings})")
        return self.lang_embedding(torch.tensor(language, device=device))

    def build_prefix(
        self,
        speaker_latents: torch.Tensor,
        emo_vec: torch.Tensor,
        text_ids: torch.Tensor,
        language: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decoding prefix of one sequence: conditioning (N + 2) then [start_text, ids, stop_text].

        speaker_latents (N, d) or (1, N, d); emo_vec (d,) or (1, d); text_ids (L,) or (1, L).
        Ids equal to start_text/stop_text are dropped first, as the official `prepare_gpt_inputs` does
        (the teacher-forced `forward` keeps them). `language` (IndexTTS-2.5 only): `lang_embedding(language)`
        is added to every text row; None adds nothing (the official `langs=None` call). -> (N + 2 + L' + 2,
        d); the start-mel token is not included.
        """
        speaker_latents = speaker_latents.reshape(1, -1, speaker_latents.shape[-1])
        emo_vec = emo_vec.reshape(1, -1)
        text_ids = text_ids.reshape(-1).long()
        keep = (text_ids != self.start_text_token) & (text_ids != self.stop_text_token)
        framed = torch.cat(
            [
                text_ids.new_tensor([self.start_text_token]),
                text_ids[keep],
                text_ids.new_tensor([self.stop_text_token]),
            ]
        )
        conditioning = self.conditioning_prefix(speaker_latents, emo_vec)
        text = self.text_embeddings(framed.unsqueeze(0))
        if language is not None:
            text = text + self.language_row(language, text.device)
        return torch.cat([conditioning, text.to(conditioning.dtype)], dim=1).squeeze(0)

    # --- teacher forcing ----------------------------------------------------------------------------

    def teacher_forced_inputs(
        self,
        speaker_latents: torch.Tensor,
        text_ids: torch.Tensor,
        text_lengths: torch.Tensor,
        mel_codes: torch.Tensor,
        mel_lengths: torch.Tensor,
        emo_vec: torch.Tensor,
    ) -> torch.Tensor:
        """The GPT input of `forward`: conditioning, [start, text.., stop], [start, codes.., stop].

        Text past text_lengths becomes stop_text and codes past mel_lengths become stop_mel (official
        padding); nothing is masked, as in the official forward. -> (B, N+2 + L+2 + M+2, d).
        """
        text_ids = text_ids.long()
        mel_codes = mel_codes.long()
        text_valid = torch.arange(text_ids.shape[1], device=text_ids.device)[None, :] < text_lengths[:, None]
        text_ids = torch.where(text_valid, text_ids, self.stop_text_token)
        text_ids = F.pad(F.pad(text_ids, (0, 1), value=self.stop_text_token), (1, 0), value=self.start_text_token)
        mel_valid = torch.arange(mel_codes.shape[1], device=mel_codes.device)[None, :] < mel_lengths[:, None]
        mel_codes = torch.where(mel_valid, mel_codes, self.stop_mel_token)
        mel_codes = F.pad(F.pad(mel_codes, (0, 1), value=self.stop_mel_token), (1, 0), value=self.start_mel_token)

        conditioning = self.conditioning_prefix(speaker_latents, emo_vec)
        mel_positions = torch.arange(mel_codes.shape[1], device=mel_codes.device).unsqueeze(0)
        text = self.text_embeddings(text_ids)
        mel = self.mel_embeddings(mel_codes, mel_positions)
        return torch.cat([conditioning, text.to(conditioning.dtype), mel.to(conditioning.dtype)], dim=1)

    def forward(
        self,
        speaker_latents: torch.Tensor,
        text_ids: torch.Tensor,
        text_lengths: torch.Tensor,
        mel_codes: torch.Tensor,
        mel_lengths: torch.Tensor,
        emo_vec: torch.Tensor,
    ) -> torch.Tensor:
        """Teacher-forced s2mel latents: `final_norm` hidden states at the mel input tokens
        (start, c_0, ..., c_{M-2}). -> (B, M, d).

        speaker_latents (B, N, d) from `get_conditioning`; emo_vec (B, d). The official forward's
        `emo_vec=None` case is `emo_vec = self.get_emovec(emo_features, emo_lengths)`.
        """
        embeds = self.teacher_forced_inputs(speaker_latents, text_ids, text_lengths, mel_codes, mel_lengths, emo_vec)
        hidden = self.gpt(embeds)
        num_codes = mel_codes.shape[1]
        return self.final_norm(hidden[:, -(num_codes + 2) : -2])

    def mel_logits(self, latents: torch.Tensor) -> torch.Tensor:
        return self.mel_head(latents)

    # --- decoding -----------------------------------------------------------------------------------

    def decode(
        self,
        embeds: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        caches: list[KVCache] | None = None,
        cache_slots: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One GPT pass over (B, T, d) input embeddings -> (B, T, d) `final_norm` hidden states (apply
        `mel_head` for logits). With caches: the new keys/values go to `cache_slots` (B, T) and
        `attn_mask` (B, 1, T, max_len) says which cache slots each query reads."""
        return self.final_norm(self.gpt(embeds, attn_mask, caches, cache_slots))

    def new_kv_caches(
        self, batch_size: int, max_len: int, dtype: torch.dtype, device: torch.device | str
    ) -> list[KVCache]:
        head_dim = self.model_dim // self.heads
        return [KVCache(batch_size, max_len, self.heads, head_dim, dtype, device) for _ in self.gpt.h]

    @staticmethod
    def mel_position(step: int, official_positions: bool) -> int:
        """Mel position of the token fed at decoding step `step` (start at step 0, code k-1 at step k).

        Teacher forcing (and training) puts it at `step`. The official KV-cached HF decoding puts
        steps >= 1 one further (`attention_mask.shape[1] - mel_len`): `official_positions=True`.
        """
        return step + 1 if official_positions and step > 0 else step

    @torch.inference_mode()
    def generate(
        self,
        speaker_latents: torch.Tensor,
        emo_vec: torch.Tensor,
        text_ids: torch.Tensor,
        sampling: SamplingConfig | None = None,
        official_positions: bool = False,
        use_cache: bool = True,
        language: int | None = None,
    ) -> GenerationOutput:
        """Reference autoregressive decoding of one sequence (batch 1, plain loop).

        speaker_latents (N, d) / (1, N, d) from `get_conditioning`; emo_vec (d,) / (1, d); text_ids (L,).
        Decodes until the stop code or `sampling.max_codes` codes (returned without the stop code).

        `official_positions=False` (default): mel positions as trained, so `latents` equal the
        teacher-forced `forward` on the returned codes. True: the official KV-cached positions (see
        `mel_position`), which reproduce the official codes; its latents then differ from `forward`,
        which the official pipeline runs afterwards for s2mel.
        `use_cache=False` recomputes the whole sequence each step (same positions), for checking.
        `language`: the language id of a GPT whose prefix takes one (`uses_language`); None otherwise.
        """
        sampling = sampling or SamplingConfig()
        prefix = self.build_prefix(speaker_latents, emo_vec, text_ids, language).unsqueeze(0)  # (1, P, d)
        device, dtype = prefix.device, prefix.dtype
        prefix_len = prefix.shape[1]
        max_codes = self.max_mel_tokens - 1 if sampling.max_codes is None else sampling.max_codes
        if max_codes < 1:
            raise ValueError(f"max_codes must be at least 1, got {max_codes}")
        if sampling.min_codes < 0:
            raise ValueError(f"min_codes must be >= 0, got {sampling.min_codes}")
        last_position = self.mel_position(max_codes - 1, official_positions)
        if last_position >= self.mel_pos_embedding.emb.num_embeddings:
            raise ValueError(
                f"max_codes={max_codes} needs mel position {last_position}, but the table has "
                f"{self.mel_pos_embedding.emb.num_embeddings} rows (max_mel_tokens={self.max_mel_tokens})"
            )

        generator = None
        if sampling.seed is not None:
            generator = torch.Generator(device=device).manual_seed(sampling.seed)
        do_sample = torch.tensor([sampling.do_sample], device=device)
        temperature = torch.tensor([sampling.temperature], device=device)
        top_k = torch.tensor([sampling.top_k], device=device)
        top_p = torch.tensor([sampling.top_p], device=device)
        penalty = torch.tensor([sampling.repetition_penalty], device=device)
        seen = torch.zeros(1, self.number_mel_codes, dtype=torch.bool, device=device)
        if sampling.penalize_prompt_ids:
            seen[0, [1, self.start_mel_token]] = True

        max_len = prefix_len + max_codes
        caches = self.new_kv_caches(1, max_len, dtype, device) if use_cache else None
        slot_ids = torch.arange(max_len, device=device)

        fed_codes = [self.start_mel_token]
        fed_positions = [0]
        codes: list[int] = []
        latents, step_logits, step_scores = [], [], []
        stopped = False
        for step in range(max_codes):
            if step > 0:
                fed_codes.append(codes[-1])
                fed_positions.append(self.mel_position(step, official_positions))
            if use_cache and step > 0:
                new = self.mel_embeddings(
                    torch.tensor([[fed_codes[-1]]], device=device), torch.tensor([[fed_positions[-1]]], device=device)
                )
                slot = prefix_len + step
                mask = (slot_ids <= slot)[None, None, None, :]
                hidden = self.decode(new.to(dtype), mask, caches, torch.tensor([[slot]], device=device))
            else:
                mel = self.mel_embeddings(
                    torch.tensor([fed_codes], device=device), torch.tensor([fed_positions], device=device)
                )
                embeds = torch.cat([prefix, mel.to(dtype)], dim=1)
                length = embeds.shape[1]
                if use_cache:
                    mask = causal_mask(length, device)
                    mask = F.pad(mask, (0, max_len - length), value=False)
                    hidden = self.decode(embeds, mask, caches, slot_ids[:length].unsqueeze(0))
                else:
                    hidden = self.decode(embeds)
            latent = hidden[:, -1]
            logits = self.mel_head(latent)
            scores = apply_repetition_penalty(without_start_code(logits, self.start_mel_token), seen, penalty)
            if len(codes) < sampling.min_codes:
                scores = suppress_stop_code(scores, self.stop_mel_token, torch.ones(1, dtype=torch.bool))
            if sampling.do_sample:
                scores = apply_sampling_warpers(scores, temperature, top_k, top_p)
            code = int(choose_next_codes(scores, do_sample, generator)[0])
            step_logits.append(logits[0])
            step_scores.append(scores[0])
            if code == self.stop_mel_token:
                stopped = True
                break
            latents.append(latent[0])
            codes.append(code)
            seen[0, code] = True

        return GenerationOutput(
            codes=torch.tensor(codes, dtype=torch.long, device=device),
            latents=torch.stack(latents) if latents else prefix.new_zeros(0, self.model_dim),
            stopped=stopped,
            step_logits=torch.stack(step_logits),
            step_scores=torch.stack(step_scores),
        )


# ---------------------------------------------------------------------------------------------------
# Building and loading
# ---------------------------------------------------------------------------------------------------

# Keys of the config.yaml `gpt` section that only matter for training or for variants not used; each
# maps to the value our network assumes. `spk_cond_mode` must be the network's own (`UnifiedVoice.
# spk_cond_mode`); `condition_type` configures the 2.0 speaker encoder, which the campplus mode (2.5)
# does not build, so only 2.0 checks it.
_FIXED_GPT_KEYS: dict[str, Any] = {
    "use_mel_codes_as_input": True,
    "train_solo_embeddings": False,
    "types": 1,
}
_IGNORED_GPT_KEYS = {"mel_length_compression", "checkpointing", "use_accel"}

Network = TypeVar("Network", bound=UnifiedVoice)  # UnifiedVoice or UnifiedVoice25


def build_unified_voice(network: type[Network], gpt_config: Mapping[str, Any], **overrides: Any) -> Network:
    """A randomly initialised `network` (UnifiedVoice or UnifiedVoice25) from the config.yaml `gpt`
    section (a plain dict). `overrides` go to the constructor (e.g. `zero_conformer_padding`)."""
    fixed = {**_FIXED_GPT_KEYS, "spk_cond_mode": network.spk_cond_mode}
    ignored = set(_IGNORED_GPT_KEYS)
    if network.spk_cond_mode == "conformer":
        fixed["condition_type"] = "conformer_perceiver"
    else:
        ignored.add("condition_type")
    kwargs: dict[str, Any] = {}
    for key, value in gpt_config.items():
        if key in fixed:
            if value != fixed[key]:
                raise ValueError(
                    f"gpt config {key}={value!r} is not supported (IndexTTS-{network.version} uses {fixed[key]!r})"
                )
        elif key not in ignored:
            kwargs[key] = value
    kwargs.update(overrides)
    try:
        return network(**kwargs)
    except TypeError as error:
        raise ValueError(f"gpt config does not fit the IndexTTS-{network.version} UnifiedVoice: {error}") from error


def build_gpt(gpt_config: Mapping[str, Any], **overrides: Any) -> UnifiedVoice:
    """A randomly initialised IndexTTS-2.0 `UnifiedVoice` from the config.yaml `gpt` section."""
    return build_unified_voice(UnifiedVoice, gpt_config, **overrides)


# Keys only one version's GPT has; in a file given to the other version's loader they say which it is.
_V2_0_ONLY_PREFIXES = ("conditioning_encoder.", "perceiver_encoder.", "speed_emb.")
_V2_5_ONLY_PREFIXES = ("spk_emb_proj.", "lang_embedding.")


def gpt_version_hint(keys: Any, expected: str) -> str:
    """A sentence saying that a GPT state dict is of the other IndexTTS version than `expected`
    ('2.0' or '2.5'), or '' if it does not look so."""
    keys = sorted(str(key) for key in keys)
    # The most telling key first: the one-tensor speed_emb of 2.0, the language table of 2.5.
    only_2_0 = sorted((key for key in keys if key.startswith(_V2_0_ONLY_PREFIXES)),
                      key=lambda key: key != "speed_emb.weight")
    only_2_5 = [key for key in keys if key.startswith(_V2_5_ONLY_PREFIXES)]
    if expected == "2.5" and only_2_0 and not only_2_5:
        return (f"this is an IndexTTS-2.0 GPT, not an IndexTTS-2.5 one: it has {only_2_0[0]!r} and no "
                "'spk_emb_proj.weight' or 'lang_embedding.weight'")
    if expected == "2.0" and only_2_5 and not only_2_0:
        return (f"this is an IndexTTS-2.5 GPT, not an IndexTTS-2.0 one: it has {only_2_5[0]!r} and no "
                "speaker conformer/perceiver or 'speed_emb.weight'")
    return ""


def load_unified_voice(
    network: type[Network], gpt_config: Mapping[str, Any], path: str | Path, **overrides: Any
) -> Network:
    """Build `network` from the config and load the official `gpt.pth` (a plain state dict) strictly,
    in eval mode; a file of the other IndexTTS version is refused with a message that says so."""
    state_dict = torch_load(path)
    if isinstance(state_dict, Mapping) and "model" in state_dict and not torch.is_tensor(state_dict["model"]):
        state_dict = state_dict["model"]  # the official loader accepts this wrapper too
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state_dict).__name__}")
    model = build_unified_voice(network, gpt_config, **overrides)
    try:
        load_state_dict_strict(model, state_dict, path)
    except CheckpointError as error:
        hint = gpt_version_hint(state_dict, network.version)
        raise CheckpointError(f"{error}\n  ({hint})" if hint else str(error)) from None
    return model.eval()


def load_gpt(gpt_config: Mapping[str, Any], path: str | Path, **overrides: Any) -> UnifiedVoice:
    """Build from the config and load the official IndexTTS-2.0 `gpt.pth` strictly, in eval mode."""
    return load_unified_voice(UnifiedVoice, gpt_config, path, **overrides)
