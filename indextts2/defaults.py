"""The official IndexTTS-2 inference defaults (infer_v2's), defined once. Standard library only, so the
orchestrator, the schemas, the Triton models and the benchmarks all import them without the network
stack."""

# Sampling of the GPT's semantic codes.
DO_SAMPLE = True
TEMPERATURE = 0.8
TOP_K = 30
TOP_P = 0.8
REPETITION_PENALTY = 10.0
MAX_CODES = 1500  # infer_v2's max_mel_tokens argument; a model's position table may allow fewer

# s2mel: flow-matching steps and classifier-free guidance.
DIFFUSION_STEPS = 25
CFG_RATE = 0.7
DURATION_RATIO = 1.0

# Text and audio around the networks.
MAX_TEXT_TOKENS_PER_SEGMENT = 120  # infer_v2's max_text_tokens_per_segment
SEGMENT_SILENCE_MS = 200  # infer_v2's interval_silence between text segments
OUTPUT_SAMPLE_RATE = 22050  # s2mel's mel and BigVGAN's waveform
MEL_HOP_SAMPLES = 256  # waveform samples per mel frame (BigVGAN's upsampling)
FEATURE_SAMPLE_RATE = 16000  # w2v-BERT features and the CAMPPlus fbank
MAX_PROMPT_SECONDS = 15.0  # reference audio past this is cut
CODES_TO_MEL_FRAMES = 1.72  # 50 codes/s -> 22050/256 = 86.13 mel frames/s

# IndexTTS-2.5: the languages a request may name (the official web UI's choices; `auto` detects one).
SERVED_LANGUAGES_2_5 = ("zh", "en", "ja", "es", "ar")
