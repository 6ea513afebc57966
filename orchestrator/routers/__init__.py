"""HTTP routes, thin: parse, call one TtsService method, build the response."""
