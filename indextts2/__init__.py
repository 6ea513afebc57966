"""IndexTTS-2 networks, checkpoint loading, demo preset and front-ends, shared by export/,
model_repository/, orchestrator/ and benchmarks/."""
